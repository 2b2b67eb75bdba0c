"""The base model's step-0 KID, computed once: every job of an lr sweep starts from the same base.

A result cache (torchmetrics keeps features within a run, not results across runs). The key hashes
what the number depends on: the sampling UNet's weights, the real images, the noise schedule and
the measurement settings (features, samples, steps, seed, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def _update(digest: Any, tensors: Iterable[torch.Tensor]) -> None:
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 (hex) of the tensors' bytes, in order (the held-out images of a run)."""
    out = hashlib.sha256()
    _update(out, tensors)
    return out.hexdigest()


def cache_key(unet: torch.nn.Module, settings: dict[str, Any]) -> str:
    """24 hex digits of sha256 over the settings (real images' digest included) and the weights."""
    out = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        out.update(name.encode())
        _update(out, [tensor])
    return out.hexdigest()[:24]


def read(cache_dir: str | Path, key: str) -> dict[str, float] | None:
    """The cached metrics of `key`, or None (missing or unreadable: a cache is never fatal)."""
    path = Path(cache_dir) / f"{key}.json"
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return None


def write(cache_dir: str | Path, key: str, metrics: dict[str, float]) -> None:
    """Store `metrics` under `key` (atomic rename; a failed write only costs a recomputation)."""
    path = Path(cache_dir) / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(metrics))
        tmp.replace(path)
    except OSError as err:
        log.warning("could not cache the step-0 KID in %s: %s", path, err)
