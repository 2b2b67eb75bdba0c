"""Repeatable runs: the same config and seed, the same losses and weights; the run's record."""

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import open_dict

from difftune.run.provenance import RunRecord, git_state
from difftune.run.train import train
from helpers.compose import ROOT, compose_train, shrink
from helpers.runs import unet_weights


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
    RunRecord().on_job_start(config=cfg)  # Hydra calls it as each job starts (conf/train.yaml)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["command"] == shlex.join([Path(sys.executable).name, *sys.argv])  # this process's
    assert set(info["versions"]) >= {"torch", "diffusers", "lightning", "difftune"}
    assert info["versions"]["torch"] == torch.__version__
    git = info["git"]
    if (ROOT / ".git").exists():
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        assert git == {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    resolved = (tmp_path / "config_resolved.yaml").read_text()
    assert "lr: 0.0001" in resolved and "${" not in resolved


def test_git_state_says_whether_tracked_files_changed(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)  # fmt: skip

    assert git_state(tmp_path) is None  # not a repository
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "new.py").write_text("")  # untracked: not dirty
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
