"""SIGTERM, Ctrl-C and SLURM's SIGUSR1: a checkpoint to resume from, and the run resumes from it."""

import csv
import os
import signal

import pytest
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import open_dict

from difftune.run.train import train
from helpers.cli import one_line_exit_2
from helpers.compose import compose_train, shrink
from helpers.faults import AtStep, run_with
from helpers.runs import step_of


def test_sigterm_saves_last_ckpt_and_the_run_resumes_from_it(tmp_path):
    cfg = shrink(compose_train(output_dir=tmp_path / "a"), steps=8)
    term = AtStep(3, lambda trainer: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SIGTERMException) as stopped:  # the entry points' boundary says it
        run_with(cfg, term)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert stopped.value.resume_hint == f"at step {step_of(last)}; resume with ckpt_path={last}"
    assert step_of(last) in (3, 4)  # Lightning stops at the step boundary after the signal
    assert not (tmp_path / "a" / "pipeline").exists()  # nothing half-trained exported

    resumed = shrink(compose_train(f"ckpt_path={last}", output_dir=tmp_path / "b"), steps=8)
    train(resumed)
    assert step_of(tmp_path / "b" / "checkpoints" / "last.ckpt") == 8


def test_ctrl_c_saves_last_ckpt_and_exits_with_the_resume_command(cfg_train, tmp_path, capsys):
    cfg = shrink(cfg_train, steps=8)
    ctrl_c = AtStep(2, lambda trainer: os.kill(os.getpid(), signal.SIGINT))
    previous = signal.getsignal(signal.SIGINT)
    try:
        line = one_line_exit_2(lambda c: run_with(c, ctrl_c), cfg, capsys)
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores further Ctrl-C while it saves
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert step_of(last) == 2
    assert line == f"error: stopped by Ctrl-C at step 2; resume with ckpt_path={last}"


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


def test_a_requeued_slurm_job_resumes_from_its_hpc_checkpoint(tmp_path, monkeypatch):
    """Lightning's SIGUSR1 handler leaves hpc_ckpt_<n>.ckpt in the run dir; the requeued job,
    in the same run dir, resumes from it instead of starting over."""
    first = shrink(compose_train(output_dir=tmp_path / "first"), steps=4)
    train(first)
    run_dir = tmp_path / "job"
    run_dir.mkdir()
    (tmp_path / "first" / "checkpoints" / "last.ckpt").rename(run_dir / "hpc_ckpt_1.ckpt")

    for key, value in dict(
        SLURM_NTASKS="1", SLURM_JOB_NAME="train", SLURM_JOB_ID="4242", SLURM_PROCID="0",
        SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost",
    ).items():  # fmt: skip
        monkeypatch.setenv(key, value)
    requeued = shrink(compose_train(output_dir=run_dir), steps=6)
    with open_dict(requeued):
        requeued.trainer.log_every_n_steps = 1
    train(requeued)
    with open(run_dir / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [4, 5]  # only the steps after the checkpoint were trained


def crash(trainer) -> None:
    raise RuntimeError("a bug at step 3")


def test_a_crash_keeps_the_last_good_checkpoint_where_lightnings_on_exception_does_not(tmp_path):
    """Why `FinalCheckpoint` saves only on Ctrl-C / SIGTERM, unlike Lightning's
    `OnExceptionCheckpoint` (any exception): after a crash last.ckpt stays the last period's."""
    cfg = shrink(
        compose_train(
            "callbacks.final_checkpoint.every_n_train_steps=2", output_dir=tmp_path / "a"
        ),
        steps=8,
    )
    lightning = OnExceptionCheckpoint(dirpath=tmp_path / "lightning", filename="last")
    with pytest.raises(RuntimeError, match="a bug at step 3"):
        run_with(cfg, AtStep(3, crash), lightning)
    assert step_of(tmp_path / "a" / "checkpoints" / "last.ckpt") == 2
    assert step_of(tmp_path / "lightning" / "last.ckpt") == 3
