"""Sweeps with a summary, DDP on the CPU, the submitit launcher, SLURM requeue, repeatable runs."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image
from safetensors.torch import load_file
from test_train import CONF, ROOT, compose_train, shrink

import difftune.run.preflight as preflight
from difftune.errors import DifftuneError
from difftune.run.preflight import check_command_line
from difftune.run.train import train

WEIGHTS = "diffusion_pytorch_model.safetensors"
SHRINK = [  # the embedded default, 4 steps, cheap grids
    "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
    "callbacks.sample_grid.every_n_steps=4", "callbacks.sample_grid.num_images=2",
    "callbacks.sample_grid.num_inference_steps=2", "+trainer.enable_progress_bar=false",
    "resume_dir=${hydra:runtime.output_dir}/resume_index",
]  # fmt: skip


def run_cli(*args: str, script: str = "train.py") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def unet_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "pipeline" / "unet" / WEIGHTS)


# --- sweeps ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_multirun_runs_every_job_and_records_a_failed_one_in_the_summary(tmp_path):
    result = run_cli("-m", "model.optimizer.lr=-1,1e-4", *SHRINK, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode != 0  # Hydra reports the failed job at the end
    assert "error: model.optimizer.lr=-1 must be a number > 0" in result.stderr

    rows = summary_rows(tmp_path)
    assert [r["job"] for r in rows] == ["0", "1"]
    assert rows[0]["status"].startswith("failed: DifftuneError: model.optimizer.lr=-1")
    assert "model.optimizer.lr=-1" in rows[0]["overrides"] and rows[0]["train/loss"] == ""
    assert rows[1]["status"] == "completed"  # the job after the failed one still ran
    assert "model.optimizer.lr=0.0001" in rows[1]["overrides"]
    assert 0 < float(rows[1]["train/loss"]) < 1 and 0 < float(rows[1]["val/loss"]) < 1
    assert float(rows[1]["wall_s"]) > 0 and Path(rows[1]["path"]) == tmp_path / "1"
    assert (tmp_path / "1" / "pipeline" / "model_index.json").is_file()
    final = json.loads((tmp_path / "1" / "final_metrics.json").read_text())
    assert float(rows[1]["train/loss"]) == pytest.approx(final["train/loss"])

    markdown = (tmp_path / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| job | status | overrides | train/loss | val/loss |")
    assert len(markdown) == 4 and "| completed |" in markdown[3]


def test_ready_sweeps_compose_as_multiruns():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        lr = compose("train", overrides=["sweep=lr"], return_hydra_config=True)
        scale = compose("sample", overrides=["sweep=guidance_scale"], return_hydra_config=True)
        optuna = compose("train", overrides=["sweep=lr_optuna"], return_hydra_config=True)
    assert str(lr.hydra.mode) == "RunMode.MULTIRUN"
    assert lr.hydra.sweeper.params["model.optimizer.lr"] == "1e-4,3e-4,1e-3"
    assert "kid" in lr.callbacks  # every job of the lr sweep measures KID
    assert scale.hydra.sweeper.params["guidance.scale"] == "0,20,40,80"
    assert scale.guidance.guide._target_ == "difftune.guidance.Guidance"
    assert "OptunaSweeper" in optuna.hydra.sweeper._target_
    assert optuna.objective == "val/kid_small" and optuna.hydra.sweeper.direction == "minimize"


@pytest.mark.slow
def test_a_guidance_scale_sweep_leaves_one_labelled_montage(tmp_path):
    result = run_cli(
        "-m", "guidance=color", "guidance.scale=0,60", "num_images=4", "batch_size=4",
        "num_inference_steps=3", f"hydra.sweep.dir={tmp_path}", script="sample.py",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    grids = [Image.open(tmp_path / job / "grid.png").convert("RGB") for job in ("0", "1")]
    montage = Image.open(tmp_path / "montage.png").convert("RGB")
    factor = 256 // grids[0].width + (256 % grids[0].width > 0)  # enlarged to >= 256 px
    side = grids[0].width * factor
    assert montage.size == (2 * side + 8, 28 + side)
    for k, grid in enumerate(grids):  # each job's grid, enlarged, under its overrides
        panel = montage.crop((k * (side + 8), 28, k * (side + 8) + side, 28 + side))
        assert list(panel.resize(grid.size, Image.Resampling.NEAREST).getdata()) == list(
            grid.getdata()
        )
    assert [r["status"] for r in summary_rows(tmp_path)] == ["completed", "completed"]


@pytest.mark.slow
def test_optuna_sweep_minimises_the_objective_and_summarises(tmp_path):
    result = run_cli(
        "sweep=lr_optuna", "hydra.sweeper.n_trials=2", "callbacks.kid.num_samples=8",
        "callbacks.kid.num_inference_steps=2", *SHRINK, f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    rows = summary_rows(tmp_path)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    kids = [float(r["metrics"].split("val/kid_small=")[1].split()[0]) for r in rows]
    assert best["best_value"] == pytest.approx(min(kids), rel=1e-3)  # the summary shows 4 digits


# --- bad input, before any job starts ------------------------------------------------------------


def test_sweep_over_an_unknown_key_is_one_line_before_any_job(tmp_path):
    result = run_cli(
        "-m", "model.optimizer.lr=1e-4,1e-3", "model.lr=3", f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.lr=3: no such key; '+model.lr=3' adds a new one, and "
        "`python train.py --cfg job` lists the keys there are"
    ]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # no job started


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", ["-m", "hardware=tpu", "seed=0,1"])
    assert str(err.value) == (
        "hardware=tpu: no such option; valid: cpu, ddp_cpu, gpu, multi_gpu, slurm"
    )


def test_multi_gpu_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(preflight.torch.cuda, "is_available", lambda: False)
    with pytest.raises(DifftuneError, match=r"^hardware=multi_gpu: trainer.accelerator=gpu but no"):
        check_command_line(CONF, "train", ["hardware=multi_gpu"])


def test_an_experiment_that_sets_a_gpu_is_named_not_the_key_it_set(monkeypatch):
    monkeypatch.setattr(preflight.torch.cuda, "is_available", lambda: False)
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", ["experiment=vintage_faces"])
    assert str(err.value).startswith(
        "experiment=vintage_faces (it sets hardware=gpu): trainer.accelerator=gpu but no CUDA GPU"
    )
    assert "add hardware=cpu" in str(err.value)
    with pytest.raises(DifftuneError, match=r"^hardware=gpu: "):  # typed: named as typed
        check_command_line(CONF, "train", ["experiment=vintage_faces", "hardware=gpu"])


@pytest.mark.parametrize("script", ["train", "sample"])
def test_a_comma_without_m_shows_the_quoting_or_the_sweep_flag(script):
    """The README's CLIP prompt as bash passes it unquoted: Hydra would call it ambiguous."""
    prompt = "Red Rose, red flower painting"
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, script, ["guidance=clip", f"guidance.prompt={prompt}"])
    assert str(err.value) == (
        f"guidance.prompt={prompt}: Hydra reads a comma as a list of values to sweep; for text "
        "with commas quote it for Hydra inside the shell's quotes: "
        f"'guidance.prompt=\"{prompt}\"'; to sweep, add -m"
    )
    check_command_line(CONF, script, ["guidance=clip", f'guidance.prompt="{prompt}"'])  # quoted


def test_ddp_in_a_sweep_needs_a_rank_launcher(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(DifftuneError, match="hardware=ddp_cpu with -m: .* torchrun"):
        check_command_line(CONF, "train", ["-m", "hardware=ddp_cpu", "seed=0,1"])
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")  # torchrun made the ranks: fine
    check_command_line(CONF, "train", ["-m", "hardware=ddp_cpu", "seed=0,1"])


def test_slurm_without_the_submitit_launcher_is_one_line():
    # What Hydra says when the launcher plugin is not installed: its config is not found.
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", ["hardware=slurm", "hydra/launcher=submitit_gone"])
    assert str(err.value) == (
        "hardware=slurm needs the Hydra submitit launcher: pip install hydra-submitit-launcher "
        "(it is in difftune's dependencies)"
    )


# --- DDP on the CPU -------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_cpu_two_processes_write_one_run(tmp_path):
    result = run_cli("hardware=ddp_cpu", *SHRINK, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert "effective batch 32 (world size 2)" in log
    assert (tmp_path / "train_ddp_process_1.log").is_file()  # the second rank ran
    hparams = (tmp_path / "hparams.yaml").read_text()
    assert "effective_batch: 32" in hparams and "world_size: 2" in hparams
    with open(tmp_path / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]  # one row per step: rank 0 logs the loss reduced over ranks
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
def test_ddp_sweep_through_torchrun_runs_each_job_once_on_both_ranks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train.py", "-m", "hardware=ddp_cpu", "model.optimizer.lr=1e-4,3e-4", *SHRINK,
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


# --- clusters -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_through_the_submitit_local_launcher(tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_local", *SHRINK, f"hydra.sweep.dir={tmp_path}")
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


# --- reproducibility ------------------------------------------------------------------------------


def test_same_config_and_seed_give_the_same_losses_and_weights(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = shrink(compose_train(output_dir=tmp_path / name), steps=6)
        with open_dict(cfg):
            cfg.trainer.log_every_n_steps = 1
        train(cfg)
        with open(tmp_path / name / "metrics.csv") as f:
            losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
        runs.append((losses, unet_weights(tmp_path / name)))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert len(losses_a) == 6 and losses_a == losses_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_run_directory_records_config_command_commit_and_versions(tmp_path):
    cfg = shrink(compose_train("model.optimizer.lr=1e-4", output_dir=tmp_path), steps=1)
    train(cfg)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["command"].startswith("python") and "pytest" in info["command"]
    assert set(info["versions"]) >= {"torch", "diffusers", "lightning", "difftune"}
    assert info["versions"]["torch"] == torch.__version__
    git = info["git"]
    if (ROOT / ".git").exists():
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        assert git["commit"] == head.stdout.strip() and isinstance(git["dirty"], bool)
    resolved = (tmp_path / "config_resolved.yaml").read_text()
    assert "lr: 0.0001" in resolved and "${" not in resolved
