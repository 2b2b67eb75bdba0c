"""Faults injected on purpose: interrupted writers, signals, NaN batches, bad files, bad configs."""

import csv
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import open_dict
from PIL import Image
from safetensors.torch import load_file
from test_data import write_mixed_folder
from test_train import ROOT, compose_train, shrink

import difftune.hub.checkpoints as checkpoint_io
import difftune.hub.pipelines as pipeline_io
import difftune.run.train as train_module
from difftune.errors import DifftuneError
from difftune.hub.checkpoints import AtomicCheckpointIO
from difftune.run.train import train

WEIGHTS = "diffusion_pytorch_model.safetensors"


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f)
                if r.get("train/loss")}  # fmt: skip


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


class AtStep(Callback):
    """Calls `action(trainer)` once, at the start of the batch that makes `step` optimizer steps."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.action(trainer)
            self.step = -1


def run_with(cfg, *callbacks: Callback):
    """train(cfg) with extra callbacks appended to the ones the config builds."""
    original = train_module.instantiate_all

    def with_extra(node):
        built = original(node)
        return built + list(callbacks) if node is not None and "final_checkpoint" in node else built

    train_module.instantiate_all = with_extra
    try:
        return train(cfg)
    finally:
        train_module.instantiate_all = original


# --- exact resume ---------------------------------------------------------------------------------

RESUME_RUN = [  # 64 training images in batches of 16: 4 batches per epoch; a checkpoint every 3
    "trainer.max_steps=12", "data.num_images=96", "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=3", "trainer.val_check_interval=100",
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip


def run_train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    return subprocess.run(
        [sys.executable, "train.py", *RESUME_RUN, *overrides, f"hydra.run.dir={run_dir}",
         f"resume_dir={run_dir.parent}/resume_index"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    whole = run_train(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = losses(tmp_path / "whole")
    weights = load_file(tmp_path / "whole" / "pipeline" / "unet" / WEIGHTS)

    # killed at the start of step 7 (epoch 1, 3rd batch) and of step 10 (epoch 2, 3rd batch),
    # after the checkpoints of steps 6 and 9
    for kill_at, saved_at in ((7, 6), (10, 9)):
        killed_dir, resumed_dir = tmp_path / f"killed{kill_at}", tmp_path / f"resumed{kill_at}"
        killed = run_train(killed_dir, "+callbacks.kill._target_=faults.KillAt",
                           f"+callbacks.kill.step={kill_at}")  # fmt: skip
        assert killed.returncode == -signal.SIGKILL
        last = killed_dir / "checkpoints" / "last.ckpt"
        assert step_of(last) == saved_at and not (killed_dir / "pipeline").exists()

        resumed = run_train(resumed_dir, f"ckpt_path={last}")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "not resumable" not in resumed.stderr  # Lightning's mid-epoch warning is silent
        got = losses(resumed_dir)
        assert sorted(got) == list(range(saved_at, 12))
        assert max(abs(got[s] - expected[s]) for s in got) <= 1e-6
        after = load_file(resumed_dir / "pipeline" / "unet" / WEIGHTS)
        assert max((after[k] - weights[k]).abs().max().item() for k in weights) <= 1e-6


def test_resume_true_finds_the_newest_checkpoint_of_the_same_config(tmp_path):
    index = f"resume_dir={tmp_path / 'index'}"
    train(shrink(compose_train(index, output_dir=tmp_path / "first"), steps=4))

    # a relaunch: new run dir, longer, resume=true, no path given
    relaunch = shrink(compose_train(index, "resume=true", output_dir=tmp_path / "again"), steps=4)
    with open_dict(relaunch):
        relaunch.trainer.max_steps = 8  # how long it runs is not part of the experiment's key
        relaunch.trainer.log_every_n_steps = 1
    train(relaunch)
    assert relaunch.ckpt_path == str(tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert sorted(losses(tmp_path / "again")) == [4, 5, 6, 7]  # continued, not restarted
    assert step_of(tmp_path / "again" / "checkpoints" / "last.ckpt") == 8


def test_resume_true_without_a_checkpoint_is_an_error(tmp_path):
    index = f"resume_dir={tmp_path / 'index'}"
    train(shrink(compose_train(index, output_dir=tmp_path / "first"), steps=2))
    other = shrink(compose_train(index, "resume=true", "model.optimizer.lr=1e-4",
                                 output_dir=tmp_path / "other"), steps=2)  # fmt: skip
    with pytest.raises(DifftuneError, match=r"^resume=true: no checkpoint of this configuration"):
        train(other)  # a different lr is a different experiment: never a silent fresh start
    assert not (tmp_path / "other" / "checkpoints").exists()


# --- atomic outputs -------------------------------------------------------------------------------


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 4  # the previous checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left


def test_an_export_killed_midway_leaves_the_previous_pipeline_loadable(tmp_path, monkeypatch):
    from conftest import make_tiny_unet
    from diffusers import DDPMPipeline, DDPMScheduler

    out = tmp_path / "pipeline"
    pipeline_io.export_pipeline(make_tiny_unet(seed=0), DDPMScheduler(), out)
    before = DDPMPipeline.from_pretrained(out).unet.conv_in.weight.clone()

    def dies_after_the_unet(self, save_directory, **kwargs):
        (Path(save_directory) / "unet").mkdir(parents=True)
        (Path(save_directory) / "unet" / "config.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", dies_after_the_unet)
    with pytest.raises(KeyboardInterrupt):
        pipeline_io.export_pipeline(make_tiny_unet(seed=1), DDPMScheduler(), out)
    monkeypatch.undo()
    after = DDPMPipeline.from_pretrained(out).unet.conv_in.weight
    assert torch.equal(before, after)


# --- interrupts -----------------------------------------------------------------------------------


def test_sigterm_saves_last_ckpt_and_the_run_resumes_from_it(tmp_path):
    cfg = shrink(compose_train(output_dir=tmp_path / "a"), steps=8)
    term = AtStep(3, lambda trainer: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(
        DifftuneError, match=r"stopped by SIGTERM at step \d; resume with ckpt_path="
    ):
        run_with(cfg, term)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert step_of(last) in (3, 4)  # Lightning stops at the step boundary after the signal
    assert not (tmp_path / "a" / "pipeline").exists()  # nothing half-trained exported

    resumed = shrink(compose_train(f"ckpt_path={last}", output_dir=tmp_path / "b"), steps=8)
    train(resumed)
    assert step_of(tmp_path / "b" / "checkpoints" / "last.ckpt") == 8


def test_ctrl_c_saves_last_ckpt_and_exits(tmp_path):
    cfg = shrink(compose_train(output_dir=tmp_path), steps=8)
    ctrl_c = AtStep(2, lambda trainer: os.kill(os.getpid(), signal.SIGINT))
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            run_with(cfg, ctrl_c)
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores further Ctrl-C while it saves
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 2


SLURM_ENV = dict(
    SLURM_NTASKS="1", SLURM_JOB_NAME="train", SLURM_JOB_ID="4242", SLURM_PROCID="0",
    SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost",
)  # fmt: skip


def test_sigusr1_under_slurm_saves_an_hpc_checkpoint_and_requeues(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # records how it was called instead of talking to SLURM
    scontrol.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path / "scontrol_args"}"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)

    cfg = shrink(compose_train(output_dir=tmp_path / "job"), steps=6)
    usr1 = AtStep(3, lambda trainer: os.kill(os.getpid(), signal.SIGUSR1))
    run_with(cfg, usr1)  # SLURM would end the job after the requeue; here it runs on
    assert (tmp_path / "scontrol_args").read_text().split() == ["requeue", "4242"]
    assert step_of(tmp_path / "job" / "hpc_ckpt_1.ckpt") == 3  # what the requeued job resumes


# --- non-finite loss ------------------------------------------------------------------------------


class PoisonBatches(Callback):
    """Fills the images of the batches at steps `step` .. `step + times - 1` with NaN.

    Records the conv_in weights at the start of every batch, in order.
    """

    def __init__(self, step: int, times: int = 1) -> None:
        self.step, self.times = step, times
        self.weights: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        self.weights.append((step, pl_module.unet.conv_in.weight.detach().clone()))
        if self.step <= step < self.step + self.times:
            batch["images"].fill_(float("nan"))


def test_a_nan_batch_is_skipped_counted_and_training_goes_on(tmp_path):
    cfg = shrink(compose_train(output_dir=tmp_path), steps=6)
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
    poison = PoisonBatches(step=2)
    metrics = run_with(cfg, poison)
    assert [step for step, _ in poison.weights] == [0, 1, 2, 3, 4, 5]
    # no update from the NaN batch (its step number passes, the weights stay)
    assert torch.equal(poison.weights[2][1], poison.weights[3][1])
    assert not torch.equal(poison.weights[3][1], poison.weights[4][1])
    assert metrics["train/nonfinite_skipped"] == 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


def test_k_consecutive_nan_batches_stop_with_a_checkpoint(tmp_path):
    cfg = shrink(compose_train("max_consecutive_nonfinite=3", output_dir=tmp_path), steps=20)
    poison = PoisonBatches(step=2, times=100)  # every batch from step 2 on is NaN
    with pytest.raises(DifftuneError, match="3 consecutive non-finite losses up to step 4"):
        run_with(cfg, poison)
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 5  # stopped after the third
    assert all(torch.equal(poison.weights[2][1], w) for _, w in poison.weights[2:])
    assert not (tmp_path / "pipeline").exists()


def test_on_nonfinite_stop_stops_at_the_first(tmp_path):
    cfg = shrink(compose_train("on_nonfinite=stop", output_dir=tmp_path), steps=20)
    with pytest.raises(DifftuneError, match=r"non-finite loss at step 1 \(on_nonfinite=stop\)"):
        run_with(cfg, PoisonBatches(step=1))
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 2


@pytest.mark.slow
def test_ddp_ranks_agree_to_skip_a_batch_that_is_nan_on_one_rank(tmp_path):
    """Rank 1's batch at step 2 is NaN, rank 0's is not: both skip (no hang, no divergence)."""
    result = run_train(
        tmp_path / "ddp", "hardware=ddp_cpu", "trainer.max_steps=4",
        "+callbacks.poison._target_=faults.PoisonOnRank", "+callbacks.poison.step=2",
        "+callbacks.poison.rank=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "ddp" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    skipped = [
        float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped")
    ]
    assert skipped and set(skipped) == {1.0}  # rank 0 counts one skip, its own loss was finite
    assert (tmp_path / "ddp" / "pipeline" / "model_index.json").is_file()


# --- safe loading ---------------------------------------------------------------------------------


def test_a_checkpoint_of_another_architecture_is_one_clear_error(tmp_path):
    small = shrink(compose_train(output_dir=tmp_path / "a"), steps=1)
    train(small)
    other = shrink(
        compose_train(
            "model=scratch", "model.unet.block_out_channels=[64,64]",
            "model.unet.down_block_types=[DownBlock2D,DownBlock2D]",
            "model.unet.up_block_types=[UpBlock2D,UpBlock2D]",
            f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}", output_dir=tmp_path / "b",
        ),
        steps=2,
    )  # fmt: skip
    with pytest.raises(DifftuneError) as err:
        train(other)
    message = str(err.value)
    assert "a checkpoint of another architecture" in message and "\n" not in message
    assert "e.g. unet.conv_in.weight is (32, 3, 3, 3) there, (64, 3, 3, 3) here" in message


class Payload:
    """Any class: unpickling it could run code, so weights_only refuses it."""


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)  # an arbitrary pickled object
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        AtomicCheckpointIO().load_checkpoint(path)


# --- bad images -----------------------------------------------------------------------------------


def test_a_folder_of_bad_images_trains_and_reports_skips_once_per_epoch(tmp_path, caplog):
    folder = tmp_path / "images"
    write_mixed_folder(folder)  # 7 convertible modes + truncated, zero-byte, text-as-png
    Image.new("RGB", (8, 8), (10, 200, 30)).save(folder / "tiny.png")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8)).save(folder / f"ok{i}.png")
    big = Image.new("RGB", (200, 200), (1, 2, 3))
    big.save(folder / "bomb.png")  # over the limit set below: PIL's decompression-bomb error
    cfg = shrink(
        compose_train("data=imagefolder", f"data.data_dir={folder}", "data.val_size=8",
                      "data.batch_size=4", "data.image_size=32", output_dir=tmp_path / "run"),
        steps=8,
    )  # fmt: skip
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 200 * 200 // 2 - 1  # PIL raises above 2x this
    try:
        with caplog.at_level(logging.WARNING, logger="difftune.core.module"):
            train(cfg)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    reports = [r.getMessage() for r in caplog.records if "undecodable images" in r.getMessage()]
    assert reports, "no per-epoch report"
    held_out = [r.getMessage() for r in caplog.records if "undecodable held-out" in r.getMessage()]
    assert held_out and all(r.startswith("validation at step ") for r in held_out)
    for report in reports:  # one line per epoch, with the reasons, never one per image
        assert report.startswith("epoch ") and "skipped" in report
    epochs = {r.split(":")[0] for r in reports}
    assert len(epochs) == len(reports)
    text = " ".join(reports + held_out)
    for reason in ("truncated", "empty file", "unreadable", "decompression bomb"):
        assert reason in text, (reason, reports)
    # each report names its first files and where all of them are listed
    listed = tmp_path / "run" / "skipped_images.txt"
    assert all(f"all listed in {listed}" in r for r in reports)
    assert any(name in text for name in ("truncated.jpg", "empty.png", "text.png", "bomb.png"))
    rows = [line.split("\t") for line in listed.read_text().splitlines()]
    assert {row[0] for row in rows} == {"train", "val"}  # held-out skips are reported too
    assert {Path(row[3]).name for row in rows} == {
        "truncated.jpg",
        "empty.png",
        "text.png",
        "bomb.png",
    }
    assert (tmp_path / "run" / "pipeline" / "model_index.json").is_file()


# --- bad configs: one line, before any model or dataset is loaded ---------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.optimizer.lr=0", "model.optimizer.lr=0 must be a number > 0"),
        ("model.optimizer.lr=-1e-4", "model.optimizer.lr=-0.0001 must be a number > 0"),
        ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be an"),
        ("data.image_size=30", "data.image_size=30 cannot go through this UNet: use a multiple of"),
        ("on_nonfinite=ignore", "on_nonfinite=ignore: expected skip (skip that batch's step) or"),
        ("guidance=clip guidance.prompt=null", "guidance.prompt=None: CLIP guidance needs a text"),
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
