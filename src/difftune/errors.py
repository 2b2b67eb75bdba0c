"""The one exception type a user sees as a single line (bad config, unloadable model or data)."""

import math
from collections.abc import Iterator
from numbers import Integral, Real


class DifftuneError(Exception):
    """A user-facing error: the message names the key, the value and what would be valid."""


def is_int_at_least(value: object, minimum: int) -> bool:
    """An integer (not a bool) >= `minimum`: the one integer test of every config check."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum


def is_number(value: object) -> bool:
    """A finite real number (not a bool): the one float test of every config check."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def require_int(key: str, value: object, minimum: int, allow_none: bool = False) -> None:
    """`key=value must be an integer >= minimum`, as one line, unless it is (or None if allowed)."""
    if not (value is None and allow_none) and not is_int_at_least(value, minimum):
        raise DifftuneError(f"{key}={value!r} must be an integer >= {minimum}")


def error_chain(err: BaseException | None) -> Iterator[BaseException]:
    """`err` and the exceptions behind it (`__cause__`, else `__context__`), each once."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
