"""An allocation the machine cannot make (a batch or image too large) is one line and exit 2:
where it stopped, the checkpoint to resume from, the sizes it had and the keys to lower."""

import gc
import re
import weakref

import torch

import difftune.run.cli as cli
from difftune.demo.job import message
from difftune.run.memory import TRAIN_ADVICE
from difftune.run.sweep import FailedJob
from helpers.cli import one_line_exit_2, run_cli
from helpers.compose import compose_sample, compose_train, shrink
from helpers.faults import AtStep, run_with
from helpers.runs import step_of

# torch's CUDA caching allocator's message, as an H100 prints it
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 1.23 GiB is free. Including non-PyTorch memory, this process has 77.95 GiB memory in "
    "use. Of the allocated memory 75.10 GiB is allocated by PyTorch, and 1.35 GiB is reserved by "
    "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)


def allocate_too_much(trainer) -> None:
    torch.empty(2**35)  # 128 GiB of float32: refused by the allocator, as a too-large batch is


def raise_cuda_oom(trainer) -> None:
    raise torch.OutOfMemoryError(CUDA_OOM)


def test_a_failed_allocation_mid_fit_names_the_step_the_checkpoint_and_the_keys(tmp_path, capsys):
    cfg = shrink(
        compose_train("callbacks.final_checkpoint.every_n_train_steps=2", output_dir=tmp_path),
        steps=8,
    )
    line = one_line_exit_2(lambda c: run_with(c, AtStep(3, allocate_too_much)), cfg, capsys)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert line == (
        f"error: out of memory (tried to allocate 128.0 GiB) at step 3 (resume from "
        f"ckpt_path={ckpt}, step 2) with data.batch_size=16 data.image_size=32 "
        f"trainer.precision=32-true: {TRAIN_ADVICE}"
    )
    assert step_of(ckpt) == 2  # the last good checkpoint, not the state the failure left


def test_out_of_gpu_memory_before_any_checkpoint_says_so_with_the_cards_figures(tmp_path, capsys):
    cfg = shrink(compose_train("data.batch_size=8", output_dir=tmp_path), steps=4)
    line = one_line_exit_2(lambda c: run_with(c, AtStep(0, raise_cuda_oom)), cfg, capsys)
    assert line.startswith(
        "error: out of GPU memory (tried to allocate 2.00 GiB; 1.23 GiB free of 79.19 GiB) at "
        "step 0 (no checkpoint written yet) with data.batch_size=8 data.image_size=32 "
    )
    assert "model.gradient_checkpointing=true" in line
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_sample_py_with_an_image_too_large_for_memory_is_one_line(tmp_path):
    """A real failed allocation: the starting noise of one 65536 px image is 48 GiB."""
    done = run_cli(
        "image_size=65536", "num_images=1", "batch_size=1", f"hydra.run.dir={tmp_path}",
        script="sample.py",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: out of memory (tried to allocate 48.0 GiB) with num_images=1 batch_size=1 "
        "image_size=65536 precision=32: lower batch_size (num_images then takes more batches) "
        "or image_size; the starting noise of all num_images is drawn at once"
    )


def test_the_demo_page_shows_out_of_memory_as_the_keys_to_lower_not_an_internal_error(tmp_path):
    cfg = compose_sample("num_images=8", "batch_size=8", output_dir=tmp_path)
    shown = message(torch.OutOfMemoryError(CUDA_OOM), cfg)
    assert re.fullmatch(
        r"out of GPU memory \(tried to allocate 2\.00 GiB; 1\.23 GiB free of 79\.19 GiB\) with "
        r"num_images=8 batch_size=8 image_size=null \(the UNet's sample_size\) precision=32: "
        r"lower batch_size .*",
        shown,
    ), shown


def test_a_sweep_job_that_ran_out_of_memory_leaves_nothing_of_its_model_behind(
    tmp_path, monkeypatch
):
    """Hydra keeps a failed job's error for the whole sweep: it must not hold the job's model,
    optimizer and activations (through its traceback), or the next jobs run out of memory too."""
    monkeypatch.setattr(cli, "in_multirun", lambda: True)
    cfg = shrink(compose_train(output_dir=tmp_path), steps=4)
    seen = {}

    def remember_then_fail(trainer) -> None:
        seen["module"] = weakref.ref(trainer.lightning_module)
        seen["optimizer"] = weakref.ref(trainer.optimizers[0])
        allocate_too_much(trainer)

    job = cli.exit_on_user_error(lambda c: run_with(c, AtStep(1, remember_then_fail)))
    recorded = job(cfg)  # kept, as Hydra keeps a job's return for the whole sweep
    assert isinstance(recorded, FailedJob)  # not float-castable: a failed trial to Optuna
    assert str(recorded).startswith("out of memory (tried to allocate 128.0 GiB) at step 1")
    gc.collect()
    assert seen["module"]() is None and seen["optimizer"]() is None
