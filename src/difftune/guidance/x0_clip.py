"""x̂0 as the scheduler itself sees it: clipped (`clip_sample`) or thresholded (Imagen, §2.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

X0Clip = Callable[[torch.Tensor], torch.Tensor]


def _identity(x0_pred: torch.Tensor) -> torch.Tensor:
    return x0_pred


def scheduler_x0_clip(scheduler: Any) -> X0Clip:
    """The map the scheduler's `step` applies to x̂0 (`pred_original_sample`), as a function.

    `thresholding=True` uses the scheduler's own dynamic thresholding (Saharia et al. 2022);
    `clip_sample=True` clamps to ±`clip_sample_range` (its gradient is zero where x̂0 saturates);
    schedulers without either (DPM-Solver by default, Euler) leave x̂0 unchanged.
    """
    config = scheduler.config
    if config.get("thresholding", False):
        return scheduler._threshold_sample
    if config.get("clip_sample", False):
        limit = float(config.get("clip_sample_range", 1.0))
        return lambda x0_pred: x0_pred.clamp(-limit, limit)
    return _identity
