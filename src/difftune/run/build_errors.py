"""A value that a library rejected while Hydra built an object from the config, as one line.

Hydra wraps whatever a constructor raises in an `InstantiationException` whose message ends with
`full_key: <node>`. When the constructor's own error is a `ValueError`, `TypeError` or Lightning's
`MisconfigurationException` (the library checked an argument), or an `ImportError` of a library's
constructor (a package the config asks for is missing), `config_error` names the key inside
that node which the reason is about, its value, and keeps the library's reason:
`trainer.max_steps=-5: `max_steps` must be a non-negative integer or -1 ...`.
Anything else raised while building (our bugs) keeps its traceback.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from difftune.errors import DifftuneError, error_chain

LIGHTNING_ERRORS = "lightning.fabric.utilities.exceptions"  # looked up, not imported: it is slow
INTERPOLATION = re.compile(r"^\$\{(\w[\w.]*)\}$")


def library_errors() -> tuple[type[BaseException], ...]:
    """The exception types with which a library rejects an argument."""
    lightning = sys.modules.get(LIGHTNING_ERRORS)
    return (ValueError, TypeError) + ((lightning.MisconfigurationException,) if lightning else ())


def show(value: Any) -> str:
    """A config value as the command line writes it (`[red, 0, 0]`, `abc`, `-5`)."""
    if isinstance(value, ListConfig | list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, ListConfig | list | tuple):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _mentions(reason: str, value: Any) -> bool:
    """Whether the library's reason quotes `value` (a string in quotes, or a number)."""
    if isinstance(value, str):
        return f"'{value}'" in reason or f'"{value}"' in reason
    if isinstance(value, int | float) and not isinstance(value, bool):
        return re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", reason) is not None
    return False


def _user_key(node: DictConfig, full_key: str, sub: str) -> str:
    """The key a user sets for `node[sub]`: the interpolation's source, else the node's own key."""
    raw = OmegaConf.to_container(node, resolve=False).get(sub)
    source = INTERPOLATION.match(raw) if isinstance(raw, str) else None
    return source.group(1) if source else f"{full_key}.{sub}".lstrip(".")


def _source(cfg: DictConfig, full_key: str) -> str:
    """`full_key`, or the node it interpolates whole (`guidance: ${guidance}`): the user's key."""
    parent, _, leaf = full_key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_missing=False) if parent else None
    if not isinstance(node, DictConfig) or not OmegaConf.is_interpolation(node, leaf):
        return full_key
    source = INTERPOLATION.match(str(OmegaConf.to_container(node, resolve=False)[leaf]))
    return source.group(1) if source else full_key


_UNRESOLVED = object()


def _value(node: DictConfig, key: str) -> Any:
    """`node[key]`, or `_UNRESOLVED` where it cannot be resolved (then it is not the culprit)."""
    try:
        return node[key]
    except Exception:  # noqa: BLE001 - an unresolvable sibling
        return _UNRESOLVED


def _echoes(reason: str, value: Any) -> bool:
    """Whether the reason names the word `value`, in any case (`strategy=deepspeed`: DeepSpeed)."""
    return isinstance(value, str) and len(value) >= 3 and value.lower() in reason.lower()


def _quotes(reason: str, value: Any) -> bool:
    """Whether the reason quotes `value` or one of its items."""
    return value is not _UNRESOLVED and any(_mentions(reason, leaf) for leaf in _leaves(value))


def _culprit(node: DictConfig, full_key: str, reason: str, overrides: Sequence[str]) -> str | None:
    """The key of `node` the reason is about: named in it; else of those set on the command line,
    the one whose value it names, quotes, or a word (a missing package is about a component a
    word names, not a number), or the first; else one whose value it quotes."""
    subs = [
        k for k in node
        if isinstance(k, str) and not k.startswith("_")
        and not isinstance(node._get_node(k), DictConfig)
    ]  # fmt: skip
    named = [k for k in subs if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", reason)]
    if named:
        return max(named, key=len)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    typed = {k: _value(node, k) for k in subs if _user_key(node, full_key, k) in given}
    for pick in (
        [k for k, v in typed.items() if _echoes(reason, v)],
        [k for k, v in typed.items() if _quotes(reason, v)],
        [k for k, v in typed.items() if isinstance(v, str)],
        list(typed),
        [k for k in subs if _quotes(reason, _value(node, k))],
    ):
        if pick:
            return pick[0]
    return None


def interpolation_error(err: BaseException) -> DifftuneError | None:
    """A `${...}` that could not be resolved while an object was built: its key, in one line.

    Hydra's instantiate resolves a value again, so an escaped `\\${` (a literal one, e.g. in a
    path) becomes an interpolation there."""
    found = next((e for e in error_chain(err) if isinstance(e, InterpolationResolutionError)), None)
    if found is None or not getattr(found, "full_key", None):
        return None
    return DifftuneError(
        f"{found.full_key}: {found.msg.strip().splitlines()[0]}; Hydra resolves a value's ${{...}} "
        "again when it builds the object, so a literal '${' cannot be passed (link the path to "
        "one without it)"
    )


def config_error(
    err: BaseException, cfg: DictConfig | None, overrides: Sequence[str] = ()
) -> DifftuneError | None:
    """One line for a library's rejection of a config value during instantiation, else None."""
    wrapper = next((e for e in error_chain(err) if isinstance(e, InstantiationException)), None)
    located = re.match(r"Error locating target '([^']+)'", str(wrapper or ""))
    if located and isinstance(cfg, DictConfig):
        found = re.search(r"full_key: (\S+)\s*$", str(wrapper))
        key = f"{_source(cfg, found.group(1))}._target_" if found else "_target_"
        return DifftuneError(
            f"{key}={located.group(1)}: Hydra cannot import it; check the module path and the "
            "name's spelling"
        )
    library_error = wrapper is not None and (
        isinstance(wrapper.__cause__, library_errors())
        or isinstance(wrapper.__cause__, ImportError)  # a package the config needs is missing
        and not str(wrapper).startswith("Error in call to target 'difftune.")  # (ours: a bug)
    )
    if not library_error or not isinstance(cfg, DictConfig):
        return None
    found = re.search(r"full_key: (\S+)\s*$", str(wrapper))
    full_key = _source(cfg, found.group(1)) if found else ""
    cause = wrapper.__cause__
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    node = OmegaConf.select(cfg, full_key, throw_on_missing=False) if full_key else None
    sub = _culprit(node, full_key, reason, overrides) if isinstance(node, DictConfig) else None
    if sub is None:
        return DifftuneError(f"{full_key or 'config'}: {reason}")
    key = _user_key(node, full_key, sub)
    if reason.startswith(f"{key}="):  # our own constructors name the key already
        return DifftuneError(reason)
    return DifftuneError(f"{key}={show(node[sub])}: {reason}")
