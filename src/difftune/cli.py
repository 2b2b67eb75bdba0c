"""Entry-point glue: a user error becomes one line on stderr and exit status 2, no traceback."""

import functools
import sys
from collections.abc import Callable
from typing import Any

from difftune.errors import DifftuneError


def user_error(err: BaseException) -> DifftuneError | None:
    """The `DifftuneError` behind `err`, also when Hydra's instantiate wrapped it."""
    while err is not None:
        if isinstance(err, DifftuneError):
            return err
        err = err.__cause__
    return None


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function so `DifftuneError`s end the process with their message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            cause = user_error(err)
            if cause is None:
                raise
            sys.stderr.write(f"error: {cause}\n")
            sys.exit(2)

    return wrapper
