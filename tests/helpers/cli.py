"""The entry points as a user runs them (subprocesses), and the one `error:` line they print."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from difftune.run.cli import exit_on_user_error
from helpers.compose import ROOT

FREE = r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free"  # the free-space part of a disk-full message

CLI_RUN = [  # 48 synthetic images, a checkpoint every 2 steps, no grids or curves
    "data.num_images=48", "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip

RESUME_RUN = [  # 64 training images in batches of 16: 4 batches per epoch; a checkpoint every 3
    "trainer.max_steps=12", "data.num_images=96", "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=3", "trainer.val_check_interval=100",
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip

SHRINK_CLI = [  # the embedded default, 4 steps, cheap grids
    "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
    "callbacks.sample_grid.every_n_steps=4", "callbacks.sample_grid.num_images=2",
    "callbacks.sample_grid.num_inference_steps=2", "+trainer.enable_progress_bar=false",
    "resume_dir=${hydra:runtime.output_dir}/resume_index",
]  # fmt: skip


def run_cli(
    *args: str, script: str = "train.py", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python <script> <args>` from the repo root, Hydra's short errors, one thread; `env`
    adds to the environment."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0", **(env or {}))
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def start_train(run_dir: Path, *overrides: str, **kwargs) -> subprocess.Popen:
    """`python train.py` into `run_dir`; tests/ on PYTHONPATH for `helpers.faults` callbacks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "tests"))
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}",
         f"resume_dir={run_dir.parent}/resume_index"],
        cwd=ROOT, env=env, text=True, **kwargs,
    )  # fmt: skip


def run_train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`start_train` to the end, its output captured."""
    proc = start_train(run_dir, *overrides, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def one_line(err: pytest.ExceptionInfo) -> str:
    """The message of a raised error, which must be one line."""
    message = str(err.value)
    assert "\n" not in message, message
    return message


def one_line_exit_2(entry, cfg, capsys) -> str:
    """Run `entry(cfg)` behind the entry points' boundary; return its one `error:` line."""
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(entry)(cfg)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
