"""Entry-point glue: a user error becomes one line on stderr and exit status 2, no traceback."""

import copy
import functools
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from difftune.errors import DifftuneError
from difftune.run.build_errors import config_error, interpolation_error
from difftune.run.disk import disk_error
from difftune.run.memory import memory_error
from difftune.run.preflight import check_command_line
from difftune.run.sweep import FailedJob


def user_error(err: BaseException) -> DifftuneError | None:
    """The `DifftuneError` behind `err`, also when Hydra's instantiate wrapped it."""
    while err is not None:
        if isinstance(err, DifftuneError):
            return err
        err = err.__cause__
    return None


def sigterm(err: BaseException | None) -> bool:
    """Whether `err` is Lightning's `SIGTERMException` (lightning is not imported for it:
    `--help` and bad input need none of it, and a run that raised one has imported it)."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(err, exceptions.SIGTERMException)


def rank_zero() -> bool:
    """Whether this process is the first of its run: one process, or rank 0 of several (started
    by Lightning, torchrun or SLURM's srun)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def full_trace() -> bool:
    """`DEBUG=1` or `HYDRA_FULL_ERROR=1`: let user errors raise with their whole traceback."""
    debug = os.environ.get("DEBUG", "") not in ("", "0")
    return debug or os.environ.get("HYDRA_FULL_ERROR") == "1"


def task_overrides() -> list[str]:
    """The overrides of the running Hydra job (none outside Hydra)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function so user errors end the process with one line and exit 2.

    User errors are `DifftuneError`s, the values a library rejected while an object was built
    from the config (`config_error`), a full or read-only disk (`disk_error`), and an allocation
    too large for the machine (`memory_error`). In a multirun the error fails only its job,
    which returns a `FailedJob`; the others run. `DEBUG=1` or `HYDRA_FULL_ERROR=1` re-raises them
    with the traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = copy.deepcopy(args[0]) if args else None  # instantiate resolves nodes in place
        failed: str | None = None
        try:
            return fn(*args, **kwargs)
        except SystemExit as err:  # SIGTERM, or Lightning's exit(1) after Ctrl-C: `last.ckpt`
            stop = err if sigterm(err) else err.__context__  # was saved
            if not (sigterm(stop) or isinstance(stop, KeyboardInterrupt)) or full_trace():
                raise
            signal = "SIGTERM" if sigterm(stop) else "Ctrl-C"
            where = getattr(stop, "resume_hint", "")
            if rank_zero():  # DDP's ranks stop together: one line, not one a rank
                sys.stderr.write(f"error: stopped by {signal}{' ' + where if where else ''}\n")
            sys.exit(2)
        except KeyboardInterrupt as err:  # before the fit started or after it (nothing to
            if full_trace():  # resume), or `train(cfg)` called outside Hydra's job
                raise
            where = getattr(err, "resume_hint", "")
            sys.stderr.write(f"error: stopped by Ctrl-C{' ' + where if where else ''}\n")
            sys.exit(2)
        except Exception as err:
            cause = (
                config_error(err, given, task_overrides())
                or user_error(err)
                or disk_error(err)
                or interpolation_error(err)
                or memory_error(err, given)
            )
            if cause is None or full_trace():
                raise
            sys.stderr.write(f"error: {cause}\n")
            if not in_multirun():
                sys.exit(2)
            failed, cause = str(cause), None  # `cause` may hold a traceback into the job
        # a multirun's failed job returns its line (a `FailedJob`), so the other jobs run and an
        # optimising sweeper records a failed trial and goes on; the sweep ends in one line and
        # exit 2 (`SweepSummary`). Outside the handler, nothing of the job (its model, optimizer
        # and activations, held by the error's frames) is kept: the next job has that memory
        release_memory()
        return FailedJob(failed)

    return wrapper


def release_memory() -> None:
    """Collect what a failed job left and return torch's cached GPU memory to the device."""
    gc.collect()
    torch = sys.modules.get("torch")  # not imported for it: `--help` and bad input need none
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def multirun_flag_first(argv: list[str]) -> list[str]:
    """`-m` / `--multirun` moved before the overrides: Hydra's parser takes the overrides as one
    run of words, so `train.py hardware=cpu -m seed=0,1` was `unrecognized arguments: seed=0,1`."""
    flags = [a for a in argv if a in ("-m", "--multirun")]
    return [*flags, *(a for a in argv if a not in flags)]


def preflight(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Check every job of the command line before Hydra starts; a bad one exits 2 in one line."""
    if full_trace():  # DEBUG=1: Hydra's own reports (an object it cannot build) in full too
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if "LOCAL_RANK" in os.environ and os.environ.get("LOCAL_RANK") != "0":
        return  # a DDP rank that Lightning started: rank 0 checked the same command line
    from difftune.run.job_checks import JOB_CHECKS

    try:
        check_command_line(config_dir, config_name, argv, JOB_CHECKS.get(config_name))
    except DifftuneError as err:
        exit_2(err)


def exit_2(err: DifftuneError) -> None:
    """Outside Hydra's job: the one line and exit status 2 (`DEBUG=1`: the traceback)."""
    if full_trace():
        raise err
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)
