"""Sweeps: every job runs and is summarised, the ready-made sweeps, a labelled montage, Optuna."""

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from difftune.run.sweep import SweepSummary
from helpers.cli import SHRINK_CLI, run_cli
from helpers.compose import CONF
from helpers.runs import assert_metrics_were_known, step_of, summary_rows


@pytest.mark.slow
def test_multirun_runs_every_job_and_records_a_failed_one_in_the_summary(tmp_path):
    """A job that fails while it runs (a bad value fails the sweep before any job starts:
    tests/run/test_run_dir.py): the others still run, and the summary says which failed."""
    fake = tmp_path / "fake.ckpt"  # exists, so the up-front checks let it through
    fake.write_text("not a checkpoint\n")
    sweep = tmp_path / "sweep"
    result = run_cli("-m", f"ckpt_path={fake},null", *SHRINK_CLI, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"error: ckpt_path={fake}: not a checkpoint" in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after every job ran: the failed ones
    assert last.startswith(f"error: 1 of 2 jobs failed (job 0: ckpt_path={fake}: not a ")
    assert last.endswith(f"each job's status is in {sweep / 'summary.csv'}")

    rows = summary_rows(sweep)
    assert [r["job"] for r in rows] == ["0", "1"]
    assert rows[0]["status"].startswith(f"failed: DifftuneError: ckpt_path={fake}: not a")
    assert f"ckpt_path={fake}" in rows[0]["overrides"] and rows[0]["train/loss"] == ""
    assert rows[1]["status"] == "completed"  # the job after the failed one still ran
    assert "ckpt_path=null" in rows[1]["overrides"]
    assert 0 < float(rows[1]["train/loss"]) < 1 and 0 < float(rows[1]["val/loss"]) < 1
    assert float(rows[1]["wall_s"]) > 0 and Path(rows[1]["path"]) == sweep / "1"
    assert (sweep / "1" / "pipeline" / "model_index.json").is_file()
    final = json.loads((sweep / "1" / "final_metrics.json").read_text())
    assert float(rows[1]["train/loss"]) == pytest.approx(final["train/loss"])
    assert_metrics_were_known(sweep / "1")

    markdown = (sweep / "summary.md").read_text().splitlines()
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
    assert scale.guidance._target_ == "difftune.guidance.color_guidance"
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
        "callbacks.kid.num_inference_steps=2", *SHRINK_CLI, f"hydra.sweep.dir={tmp_path}",
        f"callbacks.kid.cache_dir={tmp_path}/kid_cache",  # not the checkout's outputs/
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    rows = summary_rows(tmp_path)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    kids = [float(r["metrics"].split("val/kid_small=")[1].split()[0]) for r in rows]
    assert best["best_value"] == pytest.approx(min(kids), rel=1e-3)  # the summary shows 4 digits
    assert_metrics_were_known(tmp_path / "0")  # KID's names among them


@pytest.mark.slow
def test_an_optuna_sweep_whose_every_trial_failed_ends_in_one_line(tmp_path):
    """Optuna asks for the best trial after the last: with none completed that was its
    `ValueError: No trials are completed yet.` traceback."""
    fake = tmp_path / "fake.ckpt"
    fake.write_text("not a checkpoint\n")
    sweep = tmp_path / "sweep"
    result = run_cli("sweep=lr_optuna", "hydra.sweeper.n_trials=2", f"ckpt_path={fake}",
                     *SHRINK_CLI, f"hydra.sweep.dir={sweep}")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: 2 of 2 jobs failed (job 0: ckpt_path={fake}: not a checkpoint")
    assert [r["status"][:30] for r in summary_rows(sweep)] == ["failed: DifftuneError: ckpt_pa"] * 2


@pytest.mark.slow
def test_resume_true_finishes_an_interrupted_sweep_each_job_from_its_own_dir(tmp_path):
    """Jobs that differ only in keys the resume index leaves out (max_steps) never take each
    other's checkpoint; a finished job keeps its metrics and export; a job that never ran runs."""
    sweep = tmp_path / "sweep"
    shrunk = [o for o in SHRINK_CLI if not o.startswith("trainer.max_steps=")]
    common = [*shrunk, "callbacks.model_checkpoint.every_n_train_steps=2",
              f"hydra.sweep.dir={sweep}"]  # fmt: skip
    first = run_cli("-m", "trainer.max_steps=2", *common)  # job 1 (4 steps) never ran
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = (sweep / "0" / "final_metrics.json").read_text()
    weights = sweep / "0" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    exported = weights.read_bytes()

    again = run_cli("-m", "trainer.max_steps=2,4", "resume=true", *common)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (sweep / "0" / "final_metrics.json").read_text() == metrics  # not emptied
    assert weights.read_bytes() == exported  # not another job's weights
    output = again.stdout + again.stderr
    assert "no checkpoint in this job's dir yet; the job starts fresh" in output
    assert step_of(sweep / "1" / "checkpoints" / "last.ckpt") == 4
    rows = summary_rows(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert float(rows[0]["train/loss"]) == pytest.approx(json.loads(metrics)["train/loss"])


def test_a_new_sweep_into_an_old_sweep_dir_summarises_only_its_own_jobs(tmp_path):
    """Rows of an earlier sweep's jobs (here job 1, which the new sweep does not have) used to
    stay in summary.csv beside the new ones."""
    rows = tmp_path / ".summary"
    rows.mkdir()
    (rows / "0001.json").write_text('{"job": 1, "status": "completed"}')
    SweepSummary().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert list(rows.iterdir()) == []
