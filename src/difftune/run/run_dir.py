"""Claiming a run directory: writable, held by one run at a time, never another run's work.

A run holds an exclusive `flock` on `<run dir>/.difftune.lock` while it trains; the kernel drops
it when the process ends, however it ends, so a killed run never leaves its dir stuck. Under DDP
only rank 0 checks and claims: the other ranks write nothing of their own there.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from omegaconf import DictConfig

from difftune.errors import DifftuneError
from difftune.run.disk import check_writable

log = logging.getLogger(__name__)
LOCK = ".difftune.lock"
NO_FLOCK = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # e.g. Lustre w/o flock


@contextmanager
def claim_run_dir(cfg: DictConfig) -> Iterator[None]:
    """Check where the run writes, then hold its run dir until the block ends (rank 0 only)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only  # here: the job checks
    # (before Hydra starts) need no Lightning, which takes a second or more to import

    if rank_zero_only.rank != 0:
        yield
        return
    run_dir = Path(cfg.paths.output_dir)
    check_writable("paths.output_dir", run_dir, run_dir)
    if cfg.get("export_dir"):
        check_export_dir(Path(cfg.export_dir))
    for key, path in places_written(cfg):
        check_not_another_runs(key, path, run_dir)
    with _locked(run_dir):
        refusal = reuse_refusal(cfg, run_dir)
        if refusal is not None:
            raise DifftuneError(refusal)
        yield


def check_export_dir(export_dir: Path) -> None:
    """The export goes where symlinks can be made, and replaces a pipeline or nothing."""
    check_writable("export_dir", export_dir, export_dir.parent, links=True)
    if export_dir.exists() and not export_dir.is_dir():
        raise DifftuneError(
            f"export_dir={export_dir}: {export_dir} is a file, not a directory; pass a new path"
        )
    entries = sorted(p.name for p in export_dir.iterdir()) if export_dir.is_dir() else []
    if entries and "model_index.json" not in entries:
        raise DifftuneError(
            f"export_dir={export_dir}: a directory that is not a pipeline ({len(entries)} "
            f"entries, e.g. {entries[0]}), which the export would replace; pass a new directory"
        )


def places_written(cfg: DictConfig) -> list[tuple[str, Path]]:
    """The export and the callbacks' dirs (checkpoints, grids): `(key, path)` of each set."""
    places = [("export_dir", Path(cfg.export_dir))] if cfg.get("export_dir") else []
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and node.get("dirpath"):
            places.append((f"callbacks.{name}.dirpath", Path(node.dirpath)))
    return places


def check_not_another_runs(key: str, path: Path, run_dir: Path) -> None:
    """A path inside another run's dir would replace that run's files (its checkpoints, its
    pipeline): refused."""
    owner = path.absolute().parent
    if (owner / LOCK).is_file() and owner.resolve() != run_dir.resolve():
        raise DifftuneError(
            f"{key}={path}: inside another run's dir ({owner}), whose files it would replace; "
            "pass a path outside it"
        )


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DifftuneError(_in_use(run_dir, lock)) from None
        except OSError as err:
            if err.errno not in NO_FLOCK:
                raise
            log.warning("%s cannot be locked (%s): nothing stops a second run", run_dir, err)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield  # closing the file drops the lock


def _in_use(run_dir: Path, lock: IO[str]) -> str:
    lock.seek(0)
    holder = lock.read().strip() or "another process"
    return (
        f"paths.output_dir={run_dir}: in use by a run that is still going ({holder}); "
        f"write to another dir ({_dir_key()}=...) or wait until it ends"
    )


def check_not_in_use(run_dir: Path) -> None:
    """Refuse a run dir whose lock a running run holds (the lock is let go at once)."""
    if not (run_dir / LOCK).is_file():
        return
    with open(run_dir / LOCK) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DifftuneError(_in_use(run_dir, lock)) from None
        except OSError:
            return  # no flock on this file system: the run's own claim says so


def reuse_refusal(cfg: DictConfig, run_dir: Path, dir_key: str | None = None) -> str | None:
    """Why this run may not write to `run_dir`, or None: a dir holding checkpoints or this run's
    export is only for the run that continues them. `dir_key` names a new dir in the message."""
    root = run_dir.resolve()
    found = [p.relative_to(run_dir) for p in run_dir.glob("**/*.ckpt")]
    work = sorted(str(p) for p in found if not p.parts[0].startswith("."))
    if cfg.get("export_dir"):
        export_dir = Path(cfg.export_dir).parent.resolve() / Path(cfg.export_dir).name
        if export_dir.is_relative_to(root) and (export_dir / "model_index.json").is_file():
            work.append(str(export_dir.relative_to(root)))
    if not work or _continues(cfg, run_dir):
        return None
    shown = ", ".join(work[:3]) + (", ..." if len(work) > 3 else "")
    return (
        f"paths.output_dir={run_dir} already holds a run's work ({shown}); continue "
        "that run with resume=true (or ckpt_path=<one of its checkpoints>), or write to a new dir "
        f"({dir_key or _dir_key()}=...)"
    )


def _dir_key() -> str:
    """The key that names a new dir: the sweep's in a `-m` sweep, else the run's."""
    from hydra.core.hydra_config import HydraConfig

    multirun = HydraConfig.initialized() and str(HydraConfig.get().mode).endswith("MULTIRUN")
    return "hydra.sweep.dir" if multirun else "hydra.run.dir"


def _continues(cfg: DictConfig, run_dir: Path) -> bool:
    """resume=true, a ckpt_path inside the run dir, or a SLURM requeue that Lightning resumes."""
    if cfg.get("resume"):
        return True
    ckpt = cfg.get("ckpt_path")
    if ckpt and Path(ckpt).resolve().is_relative_to(run_dir.resolve()):
        return True
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect() and any(run_dir.glob("hpc_ckpt_*.ckpt"))
