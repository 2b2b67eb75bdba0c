"""The metrics a training run will log, known from its config: a mistyped `objective=` is one
line before the first job of a sweep trains, not an error after the last one."""

from __future__ import annotations

import difflib
import inspect
from fnmatch import fnmatchcase
from typing import Any

from omegaconf import DictConfig

from difftune.errors import DifftuneError


def _class_of(node: Any) -> type | None:
    """The class a `_target_` node builds, or None (not a class, or not importable here)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not isinstance(target, str):
        return None
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception:  # noqa: BLE001 - any import failure: the build reports it, not this check
        return None


def _kid_metrics(cls: type, node: DictConfig) -> list[str]:
    """KIDCallback's names: `<prefix>/kid_<features>` and its `_std` (`fid_` too with fid=true),
    each also per class (`val/kid_small/<class>`)."""
    from difftune.metrics.features import feature_name

    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    settings = {k: node.get(k, defaults[k]) for k in ("prefix", "features", "fid")}
    features = settings["features"]
    name = feature_name(features) if isinstance(features, str) else "*"
    kinds = ["kid", "fid"] if settings["fid"] else ["kid"]
    names = [f"{settings['prefix']}/{kind}_{name}" for kind in kinds]
    names.insert(1, f"{names[0]}_std")
    return names + [f"{n}/*" for n in names]


def _callback_metrics(node: Any) -> list[str] | None:
    """The metric-name patterns one callback logs; None for a callback that is neither
    difftune's nor one of Lightning's known ones (it may log anything)."""
    from lightning.pytorch.callbacks import (
        Checkpoint,
        EarlyStopping,
        LearningRateMonitor,
        ModelSummary,
        ProgressBar,
        Timer,
    )

    from difftune.callbacks.kid import KIDCallback

    cls = _class_of(node)
    if cls is None:
        return None
    if issubclass(cls, KIDCallback):
        return _kid_metrics(cls, node)
    if issubclass(cls, LearningRateMonitor):
        return ["lr-*"]  # lr-AdamW, lr-AdamW/pg1, lr-AdamW-momentum, ...
    if issubclass(cls, Checkpoint | EarlyStopping | ModelSummary | ProgressBar | Timer):
        return []
    if cls.__module__.startswith("difftune."):
        return list(getattr(cls, "METRICS", ()))
    return None


def logged_metrics(cfg: DictConfig) -> list[str] | None:
    """fnmatch patterns of every metric `train(cfg)` can log (`final_metrics.json`'s keys);
    None where the module or a callback is not one whose metrics are known."""
    from difftune.core.module import DiffusionFineTuner

    module = _class_of(cfg.get("model"))
    if module is None or not issubclass(module, DiffusionFineTuner):
        return None
    names = [n for n in DiffusionFineTuner.METRICS if n != "val/loss"]
    if cfg.get("data") is None or cfg.data.get("val_size") != 0:
        names.append("val/loss")
    for node in (cfg.get("callbacks") or {}).values():
        if node is None:
            continue
        callback = _callback_metrics(node)
        if callback is None:
            return None
        names += [n for n in callback if n not in names]
    return names


def check_objective(cfg: DictConfig) -> None:
    """`objective` is null or a metric this run logs (what an optimising sweeper minimises)."""
    key = cfg.get("objective")
    if key is None:
        return
    if not isinstance(key, str) or not key:
        raise DifftuneError(
            f"objective={key!r}: expected the name of a final metric (val/loss, "
            "val/kid_small, ...) or null"
        )
    patterns = logged_metrics(cfg)
    if patterns is None or any(fnmatchcase(key, p) for p in patterns):
        return
    if key == "val/loss":
        raise DifftuneError("objective=val/loss: data.val_size=0 holds out no validation images")
    exact = [p for p in patterns if "*" not in p]
    close = difflib.get_close_matches(key, exact, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    kid = any("/kid_" in p for p in patterns) or not ("kid_" in key or "fid_" in key)
    also = "" if kid else "; KID and FID need callbacks=kid"
    raise DifftuneError(
        f"objective={key}: not a metric this run logs{hint}; it logs {', '.join(patterns)}{also}"
    )
