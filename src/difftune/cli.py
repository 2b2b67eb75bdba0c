"""Entry-point glue: a user error becomes one line on stderr and exit status 2, no traceback."""

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from difftune.errors import DifftuneError
from difftune.preflight import check_command_line


def user_error(err: BaseException) -> DifftuneError | None:
    """The `DifftuneError` behind `err`, also when Hydra's instantiate wrapped it."""
    while err is not None:
        if isinstance(err, DifftuneError):
            return err
        err = err.__cause__
    return None


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function so `DifftuneError`s end the process with their message.

    In a multirun the error fails only its job: Hydra records it and runs the others.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = user_error(err)
            if cause is None:
                raise
            sys.stderr.write(f"error: {cause}\n")
            if in_multirun():
                raise cause from None
            sys.exit(2)

    return wrapper


def preflight(config_dir: Path, config_name: str, argv: list[str]) -> None:
    """Check every job of the command line before Hydra starts; a bad one exits 2 in one line."""
    if "LOCAL_RANK" in os.environ and os.environ.get("LOCAL_RANK") != "0":
        return  # a DDP rank that Lightning started: rank 0 checked the same command line
    try:
        check_command_line(config_dir, config_name, argv)
    except DifftuneError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
