"""A run never destroys another run's work; full disks and read-only dirs end in one line."""

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import make_tiny_unet
from diffusers import DDPMPipeline, DDPMScheduler
from omegaconf import open_dict
from run_faults import full_disk_torch_save, read_only
from test_train import ROOT, compose_train, shrink
from test_user_errors import one_line_exit_2

import difftune.hub.checkpoints as checkpoint_io
import difftune.hub.pipelines as pipeline_io
import difftune.run.train as train_module
from difftune.errors import DifftuneError
from difftune.hub.checkpoints import AtomicCheckpointIO
from difftune.hub.export import main as export_main
from difftune.run.resume import run_key
from difftune.run.train import train

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
FREE = r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free"


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def conv_in(pipeline_dir: Path) -> torch.Tensor:
    return DDPMPipeline.from_pretrained(str(pipeline_dir)).unet.conv_in.weight.detach().clone()


def quick(run_dir: Path, *overrides: str, steps: int = 2, **kwargs):
    return shrink(compose_train(*overrides, output_dir=run_dir, **kwargs), steps=steps)


# --- 2. a run never destroys another run's work -------------------------------------------------


def test_a_fresh_run_into_a_used_run_dir_is_refused_and_resuming_there_goes_on(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    index = f"resume_dir={tmp_path / 'index'}"
    train(quick(run, index))
    last = run / "checkpoints" / "last.ckpt"
    saved, exported = last.read_bytes(), (run / "pipeline" / WEIGHTS).read_bytes()

    with pytest.raises(DifftuneError) as err:  # a fresh run pointed at it
        train(quick(run, index))
    message = one_line(err)
    assert message.startswith(f"paths.output_dir={run} already holds a run's work")
    assert "checkpoints/last.ckpt" in message and "resume=true" in message
    train(quick(other, index))
    with pytest.raises(DifftuneError, match=r"already holds a run's work"):  # another run's ckpt
        train(quick(run, f"ckpt_path={other / 'checkpoints' / 'last.ckpt'}", index))
    assert last.read_bytes() == saved and (run / "pipeline" / WEIGHTS).read_bytes() == exported

    train(quick(run, f"ckpt_path={last}", index, steps=4))  # its own checkpoint: goes on
    assert step_of(last) == 4
    train(quick(run, "resume=true", index, steps=6))
    assert step_of(last) == 6


RUN = [
    "data.num_images=48", "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip


def start_train(run_dir: Path, *overrides: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    return subprocess.Popen(
        [sys.executable, "train.py", *RUN, *overrides, f"hydra.run.dir={run_dir}",
         f"resume_dir={run_dir.parent}/resume_index"],
        cwd=ROOT, env=env, text=True, **kwargs,
    )  # fmt: skip


def run_train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = start_train(run_dir, *overrides, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_a_claimed_run_dir_refuses_a_second_run_until_its_holder_dies(tmp_path):
    run_dir = tmp_path / "run"
    first = start_train(
        run_dir, "trainer.max_steps=6", "+callbacks.block._target_=run_faults.BlockAt",
        "+callbacks.block.step=3", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if not any(line.strip() == "BLOCKED" for line in first.stdout):
        pytest.fail(f"the first run ended before step 3 (exit {first.wait()})")
    last = run_dir / "checkpoints" / "last.ckpt"
    metrics = (run_dir / "metrics.csv").read_bytes()

    second = run_train(run_dir, "trainer.max_steps=6")
    assert second.returncode == 2, second.stderr[-2000:]
    error = second.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: paths.output_dir={run_dir}: in use by a run")
    assert f"pid {first.pid}" in error
    assert step_of(last) == 2 and (run_dir / "metrics.csv").read_bytes() == metrics

    first.send_signal(signal.SIGKILL)  # the kernel drops its lock with it
    first.wait()
    resumed = run_train(run_dir, "trainer.max_steps=6", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert step_of(last) == 6 and (run_dir / "pipeline" / "model_index.json").is_file()


CORRUPT = ['{"runs": ["/a", ', '["/a"]', '{"runs": 3}', b"\xff\xfe\x00"]


@pytest.mark.parametrize("content", CORRUPT, ids=["truncated", "a list", "wrong type", "binary"])
def test_a_corrupt_resume_index_is_reported_and_rebuilt(content, tmp_path, caplog):
    index_dir = tmp_path / "index"
    cfg = quick(tmp_path / "first", f"resume_dir={index_dir}")
    index = index_dir / f"{run_key(cfg)}.json"
    index_dir.mkdir()
    index.write_bytes(content.encode() if isinstance(content, str) else content)
    with caplog.at_level(logging.WARNING, logger="difftune.run.resume"):
        train(cfg)  # a fresh run: never fatal
    (warning,) = [r.getMessage() for r in caplog.records if str(index) in r.getMessage()]
    assert "unreadable" in warning and "rebuilt" in warning
    assert json.loads(index.read_text()) == {"runs": [str(tmp_path / "first")]}

    again = quick(tmp_path / "again", f"resume_dir={index_dir}", "resume=true", steps=4)
    train(again)
    assert again.ckpt_path == str(tmp_path / "first" / "checkpoints" / "last.ckpt")


def lrs(run_dir: Path) -> set[float]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("lr-AdamW")
    return {float(row.split(",")[column]) for row in lines[1:] if row.split(",")[column]}


def test_ckpt_path_with_another_lr_says_what_it_restores(tmp_path):
    train(quick(tmp_path / "first", "model.optimizer.lr=1e-5"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    changed = quick(tmp_path / "b", f"ckpt_path={last}", "model.optimizer.lr=1e-4", steps=4)
    with open_dict(changed):
        changed.trainer.log_every_n_steps = 1
    with pytest.warns(UserWarning, match="restores") as warned:
        train(changed)
    (message,) = [str(w.message) for w in warned if "restores" in str(w.message)]
    assert message.startswith(f"ckpt_path={last}: resuming restores the checkpoint's optimizer")
    assert "lr=1e-05" in message and "model.optimizer.lr=0.0001" in message
    assert lrs(tmp_path / "b") == {1e-5}  # what the warning says is what happened

    with warnings.catch_warnings(record=True) as same:
        warnings.simplefilter("always")
        train(quick(tmp_path / "c", f"ckpt_path={last}", "model.optimizer.lr=1e-5", steps=4))
    assert not [w for w in same if "restores" in str(w.message)]


# --- 3. full disks, read-only dirs, files in the way ---------------------------------------------


@pytest.mark.parametrize(
    "fails, reason",
    [
        (full_disk_torch_save, "PytorchStreamWriter failed writing file data/3"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
        (OSError(errno.EROFS, os.strerror(errno.EROFS)), os.strerror(errno.EROFS)),
    ],
    ids=["torch zip writer", "ENOSPC", "EROFS"],
)
def test_a_failed_checkpoint_write_keeps_the_previous_one(fails, reason, tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.ones(3)}, path)

    def failing_save(obj, f, *args, **kwargs):
        if callable(fails):
            fails(obj, f)
        raise fails

    monkeypatch.setattr(checkpoint_io.torch, "save", failing_save)
    with pytest.raises(DifftuneError) as err:
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    message = one_line(err)
    assert message.startswith(f"cannot write checkpoint {path} ({reason}")
    assert re.search(FREE, message) and f"resume with ckpt_path={path}" in message
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file


@pytest.mark.slow
def test_a_full_disk_at_a_periodic_checkpoint_is_one_line_exit_2_and_resumable(tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(
        run_dir, "trainer.max_steps=6", "+callbacks.disk._target_=run_faults.DiskFullAt",
        "+callbacks.disk.step=3",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert re.match(rf"error: cannot write checkpoint {run_dir}/checkpoints/\S+\.ckpt \(", error)
    assert "PytorchStreamWriter failed" in error and re.search(FREE, error)
    kept = Path(re.search(r"resume with ckpt_path=(\S+\.ckpt)", error).group(1))
    assert step_of(kept) == 2
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    train(quick(run_dir, f"ckpt_path={kept}", f"resume_dir={tmp_path}/resume_index", steps=6))
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 6


def test_a_full_disk_during_the_export_keeps_the_previous_pipeline(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(quick(run))
    before = conv_in(run / "pipeline")

    def disk_full(*args, **kwargs):
        raise safetensors.SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(DifftuneError) as err:
        train(quick(run, f"ckpt_path={last}", steps=4))
    monkeypatch.undo()
    message = one_line(err)
    assert message.startswith(f"cannot write the pipeline {run / 'pipeline'} (No space left on")
    assert re.search(FREE, message)
    command = f"python -m difftune.hub.export {last} --out {run / 'pipeline'}"
    assert message.endswith(command)
    assert torch.equal(conv_in(run / "pipeline"), before)  # the previous export, whole
    version = (run / "pipeline").readlink().name
    assert sorted(p.name for p in run.glob("*pipeline*")) == sorted(["pipeline", version])
    assert step_of(last) == 4

    export_main(command.split()[3:])  # the command it gives: the run's weights, exported
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(conv_in(run / "pipeline"), state["unet.conv_in.weight"])


def locations(tmp_path: Path) -> dict[str, tuple[list[str], Path, str]]:
    """case: (overrides, output dir, start of the error)."""
    ro, file, busy = tmp_path / "ro", tmp_path / "file", tmp_path / "busy"
    return {
        "read-only output dir": ([], ro / "run", f"paths.output_dir={ro / 'run'}: cannot write"),
        "read-only export dir": (
            [f"export_dir={ro / 'pipe'}"],
            tmp_path / "run",
            f"export_dir={ro / 'pipe'}: cannot",
        ),
        "output dir is a file": ([], file, f"paths.output_dir={file}: {file} is a file"),
        "export dir is a file": (
            [f"export_dir={file}"],
            tmp_path / "run",
            f"export_dir={file}: {file} is a file",
        ),
        "export dir is inside a file": (
            [f"export_dir={file / 'pipe'}"],
            tmp_path / "run",
            f"export_dir={file / 'pipe'}: {file}",
        ),
        "export dir holds other files": (
            [f"export_dir={busy}"],
            tmp_path / "run",
            f"export_dir={busy}: a directory that is not",
        ),
        "export dir is the run dir": (
            ["export_dir=${paths.output_dir}"],
            busy,
            f"export_dir={busy}: a directory that is not",
        ),
    }


CASES = list(locations(Path("/")))


@pytest.mark.parametrize("case", CASES)
def test_unwritable_locations_are_refused_before_training(case, tmp_path, monkeypatch):
    overrides, output_dir, start = locations(tmp_path)[case]
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("someone's work")
    (tmp_path / "ro").mkdir()
    cfg = compose_train(*overrides, f"resume_dir={tmp_path / 'index'}", output_dir=output_dir)

    def must_not_run(*args, **kwargs):
        raise AssertionError("training started in a location it cannot write")

    monkeypatch.setattr(train_module, "build", must_not_run)
    read_only(monkeypatch, tmp_path / "ro")
    with pytest.raises(DifftuneError) as err:
        train(cfg)
    message = one_line(err)
    assert message.startswith(start), message
    if "read-only" in case:
        assert os.strerror(errno.EROFS) in message
    assert (tmp_path / "busy" / "notes.txt").read_text() == "someone's work"
    assert (tmp_path / "file").read_text() == "not a directory"


# --- the export swap ----------------------------------------------------------------------------

SWAP_OPS = [(os, "rename"), (os, "replace"), (os, "symlink"), (os, "unlink"), (shutil, "rmtree")]


def test_the_export_swap_leaves_a_loadable_pipeline_at_every_moment(tmp_path, monkeypatch):
    run = tmp_path / "run"
    out = run / "pipeline"
    pipeline_io.export_pipeline(make_tiny_unet(seed=0), DDPMScheduler(), out)
    old, new = conv_in(out), make_tiny_unet(seed=1).conv_in.weight.detach().clone()
    seen, checking = [], []

    def check(op: str) -> None:
        if checking:  # loading calls the file system too
            return
        checking.append(op)
        try:
            by_diffusers = conv_in(out)
            by_sample_py = pipeline_io.load_unet(str(run)).conv_in.weight.detach()
        finally:
            checking.pop()
        assert torch.equal(by_diffusers, by_sample_py), op
        assert torch.equal(by_diffusers, old) or torch.equal(by_diffusers, new), op
        seen.append(op)

    for module, name in SWAP_OPS:
        original = getattr(module, name)

        def spied(*args, _original=original, _name=name, **kwargs):
            check(f"before {_name}")
            result = _original(*args, **kwargs)
            check(f"after {_name}")
            return result

        monkeypatch.setattr(module, name, spied)
    pipeline_io.export_pipeline(make_tiny_unet(seed=1), DDPMScheduler(), out)
    monkeypatch.undo()
    assert len(seen) >= 4 and torch.equal(conv_in(out), new)


class Killed(BaseException):
    """The process ends here."""


def dies_at(monkeypatch, step: int) -> list[str]:
    """Make the `step`-th file operation of the swap (0-based) raise `Killed`; returns the calls."""
    calls: list[str] = []
    for module, name in SWAP_OPS:
        original = getattr(module, name)

        def dies(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            if len(calls) == step + 1:
                raise Killed
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, dies)
    return calls


def test_an_export_interrupted_at_any_step_keeps_a_pipeline_and_leaves_no_temp_dirs(
    tmp_path, monkeypatch
):
    old, new = make_tiny_unet(seed=0), make_tiny_unet(seed=1)
    for step in range(20):
        out = tmp_path / str(step) / "pipeline"
        pipeline_io.export_pipeline(old, DDPMScheduler(), out)
        calls = dies_at(monkeypatch, step)
        with contextlib.suppress(Killed):
            pipeline_io.export_pipeline(new, DDPMScheduler(), out)
        monkeypatch.undo()
        now = conv_in(out)
        assert any(torch.equal(now, unet.conv_in.weight) for unet in (old, new)), calls
        pipeline_io.export_pipeline(make_tiny_unet(seed=2), DDPMScheduler(), out)  # cleans up
        assert torch.equal(conv_in(out), make_tiny_unet(seed=2).conv_in.weight)
        names = sorted(p.name for p in out.parent.iterdir())
        assert names == sorted(["pipeline", out.readlink().name]), calls
        if len(calls) <= step:
            break  # the export has fewer steps: every one was interrupted once


def test_an_export_over_a_plain_pipeline_dir_replaces_it(tmp_path, tiny_pipeline_dir):
    out = tmp_path / "exports" / "pipe"
    shutil.copytree(tiny_pipeline_dir, out)  # as exports were before the swap was versioned
    pipeline_io.export_pipeline(make_tiny_unet(seed=3), DDPMScheduler(), out)
    assert torch.equal(conv_in(out), make_tiny_unet(seed=3).conv_in.weight)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["pipe", out.readlink().name])


def test_a_full_disk_while_writing_a_sample_grid_is_one_line_at_the_boundary(
    tmp_path, monkeypatch, capsys
):
    """Grids, curves and logs are written by many hands: the entry point's boundary maps a full
    or read-only disk behind any of them to one line; the checkpoints written so far stay."""
    import difftune.callbacks.sample_grid as sample_grid

    grid = tmp_path / "run" / "samples" / "step_000002.png"

    def full_disk(x, path, *args, **kwargs):
        if Path(path).name == grid.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return grid.parent  # the step-0 grid "is written"

    monkeypatch.setattr(sample_grid, "save_panels", full_disk)
    cfg = quick(tmp_path / "run", steps=4)
    with open_dict(cfg):
        cfg.callbacks.sample_grid.every_n_steps = 2
        cfg.callbacks.model_checkpoint.every_n_train_steps = 2
    line = one_line_exit_2(train, cfg, capsys)
    assert re.match(rf"error: cannot write {grid} \(No space left on device; {FREE}\)", line)
    assert line.endswith("free space, then run the same command with resume=true")
    assert step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") >= 2  # kept, resumable


@pytest.mark.slow
def test_resume_true_goes_on_in_the_run_dir_it_came_from(tmp_path):
    """Not in a new timestamped dir: one run dir, one metrics.csv, one loss curve."""
    first = tmp_path / "first"
    assert run_train(first, "trainer.max_steps=4").returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "train.py", *RUN, "resume=true", "trainer.max_steps=6",
         f"resume_dir={tmp_path}/resume_index"],
        cwd=ROOT, env=env, text=True, capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert step_of(first / "checkpoints" / "last.ckpt") == 6
    assert "resume=true: resuming from" in (first / "train.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "resume_index"]
