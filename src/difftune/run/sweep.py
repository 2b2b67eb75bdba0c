"""The sweep summary: a Hydra callback that tabulates every job of a multirun at the sweep root.

Each job, finished or failed, leaves `<sweep dir>/.summary/<job>.json`; after every job the
tables `summary.csv` and `summary.md` are rebuilt from all of them (overrides, status, final
train/val loss, KID/FID when measured, wall time, run directory), and a sample.py sweep's grids
are put side by side, labelled by the overrides their jobs do not share, in `montage.png`.
Written by rank 0 only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from difftune.errors import DifftuneError
from difftune.run.redaction import redact_text

METRICS = ("train/loss", "val/loss")
USER_ERROR = "DifftuneError"  # the status of a job that stopped on a user error
COLUMNS = ("job", "status", "overrides", *METRICS, "metrics", "wall_s", "path")


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


class FailedJob(str):
    """What a sweep job that stopped on a user error returns to Hydra instead of raising: its
    one line. Not a number, so an optimising sweeper (Optuna) records a failed trial and goes on;
    the other jobs run, and `SweepSummary` ends the sweep in one line and exit 2."""


def job_row(job: int, job_return: JobReturn, seconds: float, path: str) -> dict[str, Any]:
    """One summary row: what the job was asked, how it ended and its final numbers."""
    crashed = job_return.status != JobStatus.COMPLETED
    try:
        result = job_return.return_value  # re-raises a failed job's exception
    except Exception as err:
        result = err
    failed = crashed or isinstance(result, FailedJob)
    kind = USER_ERROR if isinstance(result, FailedJob) else type(result).__name__
    final = Path(path) / "final_metrics.json"  # train.py's; sample.py returns its own dict
    if failed:
        values = {}
    elif final.is_file():
        values = json.loads(final.read_text())
    else:
        values = result if isinstance(result, dict) else {}
    extra = {k: v for k, v in values.items() if k.startswith(("val/kid", "val/fid"))}
    error = str(result).splitlines()[0] if failed and result is not None else ""
    return {
        "job": job,
        "status": f"failed: {kind}: {error}" if failed else "completed",
        "overrides": " ".join(map(redact_text, job_return.overrides or [])),
        **{m: values.get(m, "") for m in METRICS},
        "metrics": " ".join(f"{k}={v:.4g}" for k, v in sorted(extra.items())),
        "wall_s": round(seconds, 1),
        "path": path,
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_tables(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """`summary.csv` and `summary.md` at `sweep_dir`, one row per job in job order."""
    rows = sorted(rows, key=lambda r: r["job"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    for name, text in (("summary.csv", buffer.getvalue()), ("summary.md", "\n".join(lines) + "\n")):
        tmp = sweep_dir / f".{name}.tmp{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(sweep_dir / name)


def _words(overrides: str) -> list[str]:
    try:
        return shlex.split(overrides)  # `guidance.prompt='a red rose'` is one override
    except ValueError:
        return overrides.split()


def panel_labels(overrides: list[str]) -> list[str]:
    """Each job's overrides less those every job shares (e.g. `pretrained=<a long path>`), so a
    label shows what the sweep varied, `cfg_scale=3`; all of them where nothing differs."""
    words = [_words(o) for o in overrides]
    shared = set.intersection(*map(set, words)) if words else set()
    labels = [" ".join(w for w in job if w not in shared) for job in words]
    return labels if all(labels) else list(overrides)


def write_montage(sweep_dir: Path, rows: list[dict[str, Any]], min_width: int = 256) -> None:
    """`montage.png`: each completed job's `grid.png` (sample.py's) under what its job varied."""
    from PIL import Image

    from difftune.pictures.images import enlarged, montage

    grids = [
        (row["overrides"], Path(row["path"]) / "grid.png")
        for row in sorted(rows, key=lambda r: r["job"])
        if row["status"] == "completed" and (Path(row["path"]) / "grid.png").is_file()
    ]
    if len(grids) < 2:
        return
    labels = panel_labels([overrides for overrides, _ in grids])
    pictures = [
        (label, Image.open(path).convert("RGB"))
        for label, (_, path) in zip(labels, grids, strict=True)
    ]
    factor = max(1, math.ceil(min_width / pictures[0][1].width))
    panels = [(label, enlarged(picture, factor)) for label, picture in pictures]
    tmp = sweep_dir / f".montage.png.tmp{os.getpid()}.png"
    montage(panels, title=f"{sweep_dir.name}: {len(panels)} jobs, the same seed").save(tmp)
    tmp.replace(sweep_dir / "montage.png")


class SweepSummary(Callback):
    """Hydra callback (`hydra.callbacks`): the multirun summary tables; no-op for single runs."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._sweep_start = 0.0

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        rows_dir = sweep_dir / ".summary"
        rows_dir.mkdir(parents=True, exist_ok=True)
        job = int(config.hydra.job.num)
        path = str(config.hydra.runtime.output_dir)
        row = job_row(job, job_return, time.perf_counter() - self._start, path)
        (rows_dir / f"{job:04d}.json").write_text(json.dumps(row))
        rows = [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))]
        write_tables(sweep_dir, rows)
        write_montage(sweep_dir, rows)
        trials = config.hydra.sweeper.get("n_trials")  # Optuna's, which asks for the best trial
        if trials is not None and len(rows) >= trials and all(map(_user_error, rows)):
            _exit_on_failed_jobs(sweep_dir, rows)  # none: its traceback, not one line

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """The summary is this sweep's: rows an earlier sweep left in the same dir are dropped
        (its jobs' dirs stay; `resume=true` runs every job again, finished ones at no cost)."""
        self._sweep_start = time.time()
        if _is_rank_zero():
            for old in (Path(config.hydra.sweep.dir) / ".summary").glob("*.json"):
                old.unlink()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """After every job ran: the jobs of this sweep that stopped on a user error (their rows,
        written by whichever process ran them), in one line, and exit status 2."""
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = [
            json.loads(p.read_text())
            for p in sorted((sweep_dir / ".summary").glob("*.json"))
            if p.stat().st_mtime >= self._sweep_start
        ]
        if _is_rank_zero():
            _exit_on_failed_jobs(sweep_dir, rows)


def _user_error(row: dict[str, Any]) -> bool:
    return row["status"].startswith(f"failed: {USER_ERROR}: ")


def _exit_on_failed_jobs(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Where jobs stopped on a user error: the first, the count, in one line, and exit 2."""
    failed = [r for r in rows if _user_error(r)]
    if not failed:
        return
    first = failed[0]["status"].removeprefix(f"failed: {USER_ERROR}: ")
    sys.stderr.write(
        f"error: {len(failed)} of {len(rows)} jobs failed (job {failed[0]['job']}: {first}); "
        f"each job's status is in {sweep_dir / 'summary.csv'}\n"
    )
    sys.exit(2)


def objective(metrics: dict[str, float], key: str | None) -> dict[str, float] | float:
    """What a job returns to Hydra: every final metric, or the one an optimising sweeper needs."""
    if key is None:
        return metrics
    if key not in metrics:
        raise DifftuneError(
            f"objective={key}: not among the final metrics ({', '.join(sorted(metrics))})"
        )
    return metrics[key]
