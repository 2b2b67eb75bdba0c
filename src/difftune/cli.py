"""Entry-point glue: a user error becomes one line on stderr and exit status 2, no traceback."""

import functools
import sys
from collections.abc import Callable
from typing import Any

from difftune.errors import DifftuneError


def exit_on_user_error(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function so `DifftuneError`s end the process with their message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DifftuneError as err:
            sys.stderr.write(f"error: {err}\n")
            sys.exit(2)

    return wrapper
