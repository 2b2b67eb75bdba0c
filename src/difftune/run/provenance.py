"""What a run directory records so that the run can be repeated: config, command, code, versions."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from difftune.run.redaction import redact, redact_text
from difftune.run.run_dir import reuse_refusal

PACKAGES = ("difftune", "torch", "diffusers", "lightning", "hydra-core", "torchmetrics")


def git_state(path: Path) -> dict[str, Any] | None:
    """The commit checked out at `path` and whether tracked files differ from it (None: no git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numbers."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def record_run(cfg: DictConfig, output_dir: Path) -> Path:
    """Write `config_resolved.yaml` (secrets removed) and `run_info.json` to `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    OmegaConf.save(OmegaConf.create(resolved), output_dir / "config_resolved.yaml")
    info = {
        "command": shlex.join([Path(sys.executable).name, *map(redact_text, sys.argv)]),
        "cwd": str(Path.cwd()),
        "git": git_state(Path(__file__).resolve().parent.parent),
        "versions": {**package_versions(), "torch": torch.__version__},  # with its +cuXXX tag
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    path = output_dir / "run_info.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def record_outside_hydra(cfg: DictConfig) -> None:
    """A run started from Python (`train(cfg)` in a notebook): the files Hydra and `RunRecord`
    write for a command-line run, `.hydra/config.yaml` (secrets removed) and `record_run`'s."""
    if rank_zero_only.rank != 0:
        return
    run_dir = Path(cfg.paths.output_dir)
    config = redact(OmegaConf.to_container(cfg, resolve=False))
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    record_run(cfg, run_dir)


class RunRecord(Callback):
    """Hydra callback: as each job starts, rank 0 records it in its run dir (`record_run`), unless
    that dir holds another run's work, which the job then refuses without touching it."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if rank_zero_only.rank != 0:
            return
        job_cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        run_dir = Path(job_cfg.paths.output_dir)
        if reuse_refusal(job_cfg, run_dir) is None:
            record_run(job_cfg, run_dir)
