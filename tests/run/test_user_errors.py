"""A bad value is one `error:` line naming the key and the value, exit 2, before a model loads."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

import difftune.hub.pipelines as pipeline_io
import difftune.run.sample_images as generate_module
import difftune.run.train as train_module
from difftune.errors import DifftuneError
from difftune.run.checks import check_train_values
from difftune.run.preflight import check_command_line
from difftune.run.sample_images import sample_images
from difftune.run.train import train
from helpers.cli import one_line_exit_2, run_cli
from helpers.compose import ROOT, compose_sample, compose_train


def no_model_load(*args, **kwargs):
    raise AssertionError("a UNet was loaded before the config was checked")


@pytest.mark.parametrize(
    "overrides, key_value",
    [
        ("trainer.max_steps=-5", "trainer.max_steps=-5"),
        ("trainer.precision=fp17", "trainer.precision=fp17"),
        ("trainer.max_time=00:01:xx:00", "trainer.max_time=00:01:xx:00"),
        ("callbacks.model_checkpoint.every_n_train_steps=-3",
         "callbacks.model_checkpoint.every_n_train_steps=-3"),
        ("callbacks.sample_grid.every_n_steps=0", "callbacks.sample_grid.every_n_steps=0"),
        ("callbacks.loss_curve.every_n_steps=0", "callbacks.loss_curve.every_n_steps=0"),
        ("ema=default ema.decay=1.5", "ema.decay=1.5"),
        ("guidance=color guidance.target_rgb=[red,0,0]", "guidance.target_rgb=['red', 0, 0]: e"),
        ("guidance=clip guidance.n_cuts=four", "guidance.n_cuts='four': expected an integer"),
        ("guidance=clip guidance.prompt=null", "guidance.prompt=None: expected non-empty text"),
        ("model.optimizer.weight_decay=-0.1", "model.optimizer.weight_decay=-0.1"),
        ("model.optimizer.lr=inf", "model.optimizer.lr=inf"),
        ("seed=4294967296", "seed=4294967296"),
        ("trainer.max_steps=0", "trainer.max_steps=0"),
        ("callbacks.nonfinite.on_nonfinite=ignore",
         "callbacks.nonfinite.on_nonfinite=ignore: on_nonfinite=ignore: expected skip"),
        ("callbacks.nonfinite.max_consecutive=0", "callbacks.nonfinite.max_consecutive=0"),
        ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
        ("data.image_size=abc", "data.image_size=abc cannot go through this UNet"),
        # Lightning takes these and trains wrong: a negative clip multiplies every gradient by a
        # negative factor; half-precision weights round away updates of ~1e-5 of a weight
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 must be a number >= 0"),
        ("trainer.precision=bf16-true", "trainer.precision=bf16-true: half-precision weights"),
    ],
)  # fmt: skip
def test_train_rejects_a_bad_value_in_one_line_before_the_unet_loads(
    overrides, key_value, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(pipeline_io, "load_unet", no_model_load)
    cfg = compose_train(*overrides.split(" "), output_dir=tmp_path)
    line = one_line_exit_2(train, cfg, capsys)
    assert line.startswith(f"error: {key_value}"), line
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.max_steps=3", "trainer.accelerator=tpu"],
         "error: trainer.accelerator=tpu: Requirement 'torch_xla"),
        (["trainer.max_steps=3", "+trainer.strategy=deepspeed"],
         "error: trainer.strategy=deepspeed: To use the `DeepSpeedStrategy`, you must have"),
    ],
)  # fmt: skip
def test_a_package_the_config_needs_is_one_line_naming_the_key_that_asked(
    overrides, message, tmp_path
):
    """Lightning raises ModuleNotFoundError from its Trainer (Hydra printed it in five lines, exit
    1); of the keys typed, the one whose value the reason names, or a word, not a number."""
    result = run_cli(*overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith(message), lines[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc' must be an integer >= 1, or -1 for "
         "no limit"),
        ("trainer.max_epochs=0 trainer.max_steps=-1", "trainer.max_epochs=0 would export the "
         "model untrained; use a number of epochs >= 1 (or -1: no limit)"),
        ("trainer.max_steps=2.5", "trainer.max_steps=2.5 must be an integer >= 1, or -1 for no "
         "limit"),
        ("trainer.max_time=00:00:00:00 trainer.max_steps=-1", "trainer.max_time=00:00:00:00 "
         "would export the model untrained; use e.g. 00:12:00:00"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval=0 must be a number of steps "
         ">= 1, or a share of an epoch in (0, 1]"),
        ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0 must be an "
         "integer >= 1 or null"),
        ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps=-1 must be an integer >= 1"),
        ("trainer.devices=0", "trainer.devices=0 must be a number of devices >= 1, -1 (all), "
         "auto, or a list of device ids"),
        ("resume=maybe", "resume='maybe' must be true or false"),
        ("model/lr_scheduler=cosine model.lr_scheduler.num_warmup_steps=-5",
         "model.lr_scheduler.num_warmup_steps=-5 must be an integer >= 0"),
        ("callbacks=kid callbacks.kid.subsets=0", "callbacks.kid.subsets=0 must be >= 1"),
        ("callbacks.sample_grid.num_inference_steps=0",  # it failed at step 0, key unnamed
         "callbacks.sample_grid.num_inference_steps=0 must be an integer >= 1"),
        ("callbacks.loss_curve.every_n_steps=abc",  # "'<' not supported between 'str' and 'int'"
         "callbacks.loss_curve.every_n_steps='abc' must be an integer >= 1"),
        ("callbacks=kid callbacks.kid.fid=maybe",
         "callbacks.kid.fid='maybe': expected true or false"),
        ("model/lr_scheduler=cosine trainer.max_steps=-1", "model.lr_scheduler.num_training_steps"
         "=-1 (trainer.max_steps=-1) with trainer.max_epochs=-1: the schedule decays over the "
         "run's length, and this run has none; set trainer.max_steps=N or trainer.max_epochs=N"),
        ("model/lr_scheduler=cosine model.lr_scheduler.num_training_steps=0",
         "model.lr_scheduler.num_training_steps=0 must be an integer >= 1, or -1 (the run's "
         "length in optimizer steps, from trainer.max_epochs)"),
        ("model.pretrained=null", "model.pretrained=None: this model loads its UNet from a "
         "pipeline; pass one (model.pretrained=<hub id or dir>), or use model=scratch"),
        ("ckpt_path=.", "ckpt_path=. is a directory; pass the path of a .ckpt file (e.g. "
         "outputs/<run>/checkpoints/last.ckpt) or leave it null to start fresh"),
        ("model.noise_offset=abc", "model.noise_offset=abc must be >= 0 (0.05-0.1 usual)"),
        ("model.snr_gamma=abc", "model.snr_gamma=abc must be > 0 (5 is usual) or null"),
        ("ema=default ema.decay=abc", "ema.decay=abc must be in (0, 1)"),
        ("callbacks.sample_grid.num_images=0", "callbacks.sample_grid.num_images=0 must be >= 1"),
        ("model.optimizer._target_=torch.optim.Nope", "model.optimizer._target_=torch.optim.Nope:"
         " Hydra cannot import it; check the module path and the name's spelling"),
    ],
)  # fmt: skip
def test_train_says_exactly_what_is_wrong_before_the_fit(overrides, message, tmp_path, capsys):
    """Each of these used to reach the fit (a traceback, or a run that trained nothing) or to
    say "'<' not supported between instances of 'str' and 'int'"."""
    cfg = compose_train(*overrides.split(" "), output_dir=tmp_path)
    assert one_line_exit_2(train, cfg, capsys) == f"error: {message}"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, key_value",
    [
        ("seed=abc", "seed=abc"),
        ("num_inference_steps=2000", "num_inference_steps=2000"),
        ("guidance=color guidance.target_rgb=[0.1,x,0]", "guidance.target_rgb=[0.1, 'x', 0]: exp"),
        pytest.param("device=cuda", "device=cuda", marks=pytest.mark.skipif(
            torch.cuda.is_available(), reason="needs a machine without a GPU")),
    ],
)  # fmt: skip
def test_sample_rejects_a_bad_value_in_one_line_before_the_unet_loads(
    override, key_value, tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(generate_module, "load_unet", no_model_load)
    cfg = compose_sample(f"pretrained={tiny_pipeline_dir}", *override.split(" "),
                         output_dir=tmp_path)  # fmt: skip
    line = one_line_exit_2(sample_images, cfg, capsys)
    assert line.startswith(f"error: {key_value}"), line
    assert not (tmp_path / "grid.png").exists()


def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env={**environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True, text=True,
    )  # fmt: skip


def assert_one_error_line(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert all(text in lines[0] for text in expected), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "override, quoted",
    [
        ("data.data_dir=/data/with spaces (1)", "'data.data_dir=\"/data/with spaces (1)\"'"),
        ("model.optimizer.betas=[0.9,0.99", "'model.optimizer.betas=\"[0.9,0.99\"'"),
    ],
)
def test_an_unparsable_override_is_one_line_that_shows_the_quoting(override, quoted, tmp_path):
    result = run("train.py", override, f"hydra.run.dir={tmp_path}")
    assert_one_error_line(result, override, quoted)


@pytest.mark.parametrize("multirun", [False, True])
def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, multirun):
    (tmp_path / "notes.txt").write_text("mine")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    args = ["-m"] if multirun else []
    result = run("train.py", *args, f"{key}={tmp_path}/notes.txt/run")
    assert_one_error_line(result, f"error: {key}={tmp_path}/notes.txt/run: ", "is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_from_the_command_line_a_library_rejection_names_the_override(tmp_path):
    result = run("train.py", "trainer.max_time=abc", f"hydra.run.dir={tmp_path}")
    assert_one_error_line(result, "error: trainer.max_time=abc: ", "DD:HH:MM:SS")


@pytest.mark.parametrize("switch", ["DEBUG", "HYDRA_FULL_ERROR"])
def test_debug_shows_the_full_traceback_instead_of_the_line(tmp_path, switch):
    assert_one_error_line(run("sample.py", "seed=abc", f"hydra.run.dir={tmp_path}"), "seed=abc")
    result = run("sample.py", "seed=abc", f"hydra.run.dir={tmp_path}", **{switch: "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "difftune.errors.DifftuneError: seed=abc must be an integer" in result.stderr
    # an object Hydra cannot build: before, DEBUG=1 gave Hydra's short report, no frames
    built = run("train.py", "trainer.max_time=abc", f"hydra.run.dir={tmp_path}", **{switch: "1"})
    assert "Traceback" in built.stderr and 'File "' in built.stderr, built.stderr[-2000:]


@pytest.mark.parametrize(
    "old, new",
    [
        ("on_nonfinite=stop", "callbacks.nonfinite.on_nonfinite=stop"),
        ("max_consecutive_nonfinite=3", "callbacks.nonfinite.max_consecutive=3"),
    ],
)
def test_a_moved_key_names_its_new_spelling(old, new):
    with pytest.raises(DifftuneError) as err:
        check_command_line(ROOT / "conf", "train", [old])
    assert str(err.value) == f"{old}: this key moved; use {new}"


def test_sigterm_ends_in_one_line_with_the_resume_command(capsys):
    def stopped(cfg):
        err = SIGTERMException()
        err.resume_hint = "at step 3; resume with ckpt_path=run/checkpoints/last.ckpt"
        raise err

    line = one_line_exit_2(stopped, None, capsys)
    assert (
        line
        == "error: stopped by SIGTERM at step 3; resume with ckpt_path=run/checkpoints/last.ckpt"
    )


def test_ctrl_c_outside_the_fit_is_one_line(capsys):
    def loading(cfg):
        raise KeyboardInterrupt

    assert one_line_exit_2(loading, None, capsys) == "error: stopped by Ctrl-C"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.optimizer.lr=0", "model.optimizer.lr=0 must be a number > 0"),
        ("model.optimizer.lr=-1e-4", "model.optimizer.lr=-0.0001 must be a number > 0"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be an"),
        ("data.image_size=30", "data.image_size=30 cannot go through this UNet: use a multiple of"),
    ],
)
def test_bad_config_is_one_line_before_anything_loads(override, message, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the config was checked")

    monkeypatch.setattr(train_module, "build", must_not_run)
    monkeypatch.setattr(pipeline_io, "load_unet", must_not_run)
    cfg = compose_train(*override.split(" "), output_dir=tmp_path)
    with pytest.raises(DifftuneError) as err:
        train(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bf16_on_cpu_is_a_warning_not_an_error(tmp_path, monkeypatch):
    def stop_after_checks(cfg):
        raise RuntimeError("checks passed")

    monkeypatch.setattr(train_module, "build", stop_after_checks)
    cfg = compose_train("trainer.precision=bf16-mixed", output_dir=tmp_path)
    slow = r"trainer.precision=bf16-mixed on CPU is ~25x slower"
    with pytest.warns(UserWarning, match=slow), pytest.raises(RuntimeError, match="checks passed"):
        train(cfg)


def test_a_refused_precision_gets_no_slowness_warning_first(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "build", no_model_load)
    cfg = compose_train("trainer.precision=bf16-true", output_dir=tmp_path)  # "16": CPU-slow
    with warnings.catch_warnings(), pytest.raises(DifftuneError, match="half-precision weights"):
        warnings.simplefilter("error")  # the refusal alone, not "~25x slower on CPU" before it
        train(cfg)


def test_a_pipeline_with_damaged_weights_says_so_whole(tiny_pipeline_dir):
    """Its reason was cut at 200 characters, mid-path, and it suggested the hub."""
    weights = tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DifftuneError) as err:
        pipeline_io.load_unet(str(tiny_pipeline_dir), key="pretrained")
    message = str(err.value)
    assert message.startswith(f"pretrained='{tiny_pipeline_dir}': could not load its UNet (")
    assert str(weights) in message and "\n" not in message
    assert message.endswith("; its files are damaged or incomplete: export or download it again")


def unexported_run(root: Path, pipeline: Path) -> tuple[Path, str]:
    """A run stopped before its export: checkpoints, no pipeline/ (it said "damaged")."""
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"")
    return root, (
        "a training run without pipeline/ (it stopped before the export); export one of its "
        f"checkpoints: python -m difftune.hub.export {root}/checkpoints/last.ckpt"
    )


def folder_of_runs(root: Path, pipeline: Path) -> tuple[Path, str]:
    """`pretrained=outputs/train`, the runs' parent (it said "damaged" too)."""
    (root / "2026-11-27_10-00-00").mkdir(parents=True)
    (root / "2026-11-27_10-00-00" / "pipeline").symlink_to(pipeline)
    return root, (
        "not a pipeline dir (no model_index.json): pass a run dir, its pipeline/, or a dir that "
        f"DDPMPipeline.save_pretrained wrote; here, runs such as {root}/2026-11-27_10-00-00"
    )


@pytest.mark.parametrize("make", [unexported_run, folder_of_runs])
def test_a_dir_that_is_no_pipeline_says_what_to_pass(make, tiny_pipeline_dir, tmp_path):
    pretrained, advice = make(tmp_path / "given", tiny_pipeline_dir)
    cfg = compose_sample(f"pretrained={pretrained}", output_dir=tmp_path / "samples")
    with pytest.raises(DifftuneError) as err:
        sample_images(cfg)
    assert str(err.value).endswith(f"; {advice}")


def test_a_literal_interpolation_in_a_path_is_one_line(tmp_path, capsys):
    """An escaped `\\${` passes Hydra's command line; its instantiate resolved it again and
    raised InterpolationKeyError with a traceback."""
    (tmp_path / "d${a}").mkdir()  # there: the path is fine, only its `${` cannot be passed
    Image.new("RGB", (8, 8)).save(tmp_path / "d${a}" / "0.png")
    cfg = compose_train("data=imagefolder", f"data.data_dir={tmp_path}/d\\${{a}}",
                        output_dir=tmp_path / "run")  # fmt: skip
    assert one_line_exit_2(train, cfg, capsys) == (
        "error: data.data_dir: Interpolation key 'a' not found; Hydra resolves a value's ${...} "
        "again when it builds the object, so a literal '${' cannot be passed (link the path to "
        "one without it)"
    )


def test_a_warm_up_longer_than_the_run_is_said_once_before_it_trains(tmp_path):
    """A quick try of a config made for a long run (warm-up 100, `trainer.max_steps=50`) trained
    at a lr that never left its warm-up, without a word."""
    long = compose_train("model/lr_scheduler=cosine", "trainer.max_steps=50", output_dir=tmp_path)
    with pytest.warns(UserWarning) as caught:
        check_train_values(long)
    assert [str(w.message) for w in caught] == [
        "model.lr_scheduler.num_warmup_steps=100 >= trainer.max_steps=50: the lr never leaves "
        "its warm-up (it ends at 50% of model.optimizer.lr)"
    ]
    short = compose_train("model/lr_scheduler=cosine", "trainer.max_steps=101", output_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_train_values(short)
