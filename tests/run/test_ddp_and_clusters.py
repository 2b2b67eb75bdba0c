"""DDP on the CPU (one run of two processes, its exact resume, sweeps through torchrun),
submitit, SLURM's config."""

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from safetensors.torch import load_file

from helpers.cli import SHRINK_CLI, run_cli, run_train, start_train
from helpers.compose import CONF, ROOT
from helpers.runs import losses, step_of, summary_rows, unet_weights

DDP_RESUME_RUN = [  # 2 ranks x 32 training images in batches of 16: 2 batches per rank per epoch
    "hardware=ddp_cpu", "trainer.max_steps=6", "data.num_images=96", "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=3", "trainer.val_check_interval=100",
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip


@pytest.mark.slow
def test_ddp_cpu_two_processes_write_one_run(tmp_path):
    losses = "+callbacks.rank_losses._target_=helpers.faults.RankLosses"
    env = {"PYTHONPATH": str(ROOT / "tests")}  # the ranks import helpers.faults
    result = run_cli("hardware=ddp_cpu", *SHRINK_CLI, losses, f"hydra.run.dir={tmp_path}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert "effective batch 32 (world size 2)" in log
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # the second rank ran
    other = (tmp_path / "train_ddp_process_1.log").read_text()  # the run's summary: rank 0's
    assert "fit took" in log and "fit took" not in other and "effective batch" not in other
    hparams = (tmp_path / "hparams.yaml").read_text()
    assert "effective_batch: 32" in hparams and "world_size: 2" in hparams
    with open(tmp_path / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]  # one row per step: rank 0 logs the loss reduced over ranks
    with open(tmp_path / "metrics.csv") as f:
        logged = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f)
                  if r.get("train/loss")}  # fmt: skip
    ranks = [dict(line.split() for line in (tmp_path / f"losses_rank{r}.txt").read_text()
                  .splitlines()) for r in (0, 1)]  # fmt: skip
    for step, loss in logged.items():
        own = [float(rank[str(step)]) for rank in ranks]
        assert own[0] != own[1] and loss == pytest.approx(sum(own) / 2, rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_000000.png", "step_000004.png"
    ]  # fmt: skip
    weights = unet_weights(tmp_path)
    base = load_file(
        ROOT / "src/difftune/assets/tiny_base/unet/diffusion_pytorch_model.safetensors"
    )
    assert weights.keys() == base.keys()
    assert any(not torch.equal(weights[k], base[k]) for k in base)


@pytest.mark.slow
def test_a_compiled_ddp_run_trains_as_the_eager_one(tmp_path):
    """hardware=multi_gpu and slurm compile the UNet under DDP: on the CPU (dynamo and
    AOTAutograd, eager kernels) each rank's steps go through the compiled forward, and the
    weights and losses end as the eager DDP run's."""
    env = {"PYTHONPATH": str(ROOT / "tests")}  # the ranks import helpers.compile
    runs = {
        "eager": [],
        "compiled": [
            "model.compile=true",
            "+callbacks.compile._target_=helpers.compile.WithoutCodegen",
        ],
    }
    for name, extra in runs.items():
        result = run_cli("hardware=ddp_cpu", *SHRINK_CLI, "callbacks.sample_grid=null", *extra,
                         f"hydra.run.dir={tmp_path / name}", env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # 4 training steps each, compiled (validation and sampling run eager)
        calls = (tmp_path / "compiled" / f"compiled_calls_rank{rank}.txt").read_text()
        assert int(calls) >= 4, (rank, calls)
    expected, got = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(got) == [0, 1, 2, 3]
    assert max(abs(got[s] - expected[s]) for s in got) <= 1e-5, (got, expected)
    weights, compiled = unet_weights(tmp_path / "eager"), unet_weights(tmp_path / "compiled")
    for key, value in weights.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_ddp_run_killed_mid_epoch_resumes_to_the_uninterrupted_runs_weights(tmp_path):
    """Each rank picks its own share of the epoch up at the batch it had reached."""
    whole = run_train(tmp_path / "whole", *DDP_RESUME_RUN)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run_train(
        tmp_path / "killed", *DDP_RESUME_RUN, "+callbacks.kill._target_=helpers.faults.KillAt",
        "+callbacks.kill.step=4",
    )  # fmt: skip  # both ranks, at the start of step 4: epoch 1's second batch
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert step_of(last) == 3  # after epoch 1's first batch: mid-epoch
    resumed = run_train(tmp_path / "resumed", *DDP_RESUME_RUN, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(got) == [3, 4, 5]
    assert max(abs(got[s] - expected[s]) for s in got) <= 1e-6, (got, expected)
    after, weights = unet_weights(tmp_path / "resumed"), unet_weights(tmp_path / "whole")
    assert max((after[k] - weights[k]).abs().max().item() for k in weights) <= 1e-6


@pytest.mark.slow
def test_a_sigterm_to_every_process_of_a_ddp_run_stops_both_ranks_with_last_ckpt(tmp_path):
    """SLURM's preemption signals every process (ranks and data workers): each rank finishes the
    same step and saves; it hung, each rank waiting for the other (Lightning's own handling)."""
    run = start_train(
        tmp_path, *DDP_RESUME_RUN, "data.num_workers=1",
        "+callbacks.term._target_=helpers.faults.TermGroupAt", "+callbacks.term.step=4",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,  # the signal's process group: the run's, not pytest's
    )  # fmt: skip
    try:
        _, stderr = run.communicate(timeout=300)  # a guard against the hang, not a speed limit
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
        pytest.fail("the DDP run hung after SIGTERM")
    last = tmp_path / "checkpoints" / "last.ckpt"
    said = f"error: stopped by SIGTERM at step 5; resume with ckpt_path={last}"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 2 and errors == [said], stderr[-3000:]  # one line, not one a rank
    assert "Traceback" not in stderr and step_of(last) == 5
    for log in ("train.log", "train_ddp_process_1.log"):  # both ranks stopped after that step
        assert "SIGTERM at step 5: saved" in (tmp_path / log).read_text(), log


@pytest.mark.slow
def test_ddp_sweep_through_torchrun_runs_each_job_once_on_both_ranks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train.py", "-m", "hardware=ddp_cpu", "model.optimizer.lr=1e-4,3e-4", *SHRINK_CLI,
         f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary_rows(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    for job in ("0", "1"):
        assert "world_size: 2" in (tmp_path / job / "hparams.yaml").read_text()
        assert (tmp_path / job / "pipeline" / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and p.name[0] != ".") == [
        "0",
        "1",
    ]  # no second sweep started by rank 1


@pytest.mark.slow
def test_a_job_through_the_submitit_local_launcher(tmp_path):
    result = run_cli(
        "-m", "hydra/launcher=submitit_local", *SHRINK_CLI, f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary_rows(tmp_path)
    assert len(rows) == 1 and rows[0]["status"] == "completed"
    assert (tmp_path / "0" / "pipeline" / "model_index.json").is_file()
    assert list((tmp_path / ".submitit").glob("*/*_result.pkl"))  # submitit ran it as a job


def test_slurm_config_one_task_per_gpu_and_lightnings_requeue_signal():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=["hardware=slurm", "hydra.launcher.gpus_per_node=4"],
            return_hydra_config=True,
        )  # fmt: skip
    HydraConfig.instance().set_config(cfg)  # what a job sees: ${hydra:...} resolves
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4
    assert launcher.additional_parameters.signal == "USR1@120" and launcher.max_num_timeout > 0
    assert cfg.trainer.devices == 4 and cfg.trainer.num_nodes == 1  # read from the launcher
    assert cfg.trainer.strategy == "ddp" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
