"""Guided sampling: losses on the predicted clean image x̂0 and the Guidance that applies them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difftune.guidance.clip import ClipLoss, spherical_dist_loss
    from difftune.guidance.color import ColorLoss
    from difftune.guidance.guide import SCHEDULES, Guidance
    from difftune.guidance.options import GuidanceError
    from difftune.guidance.presets import clip_guidance, color_guidance
    from difftune.guidance.regularizers import RangeLoss, TotalVariationLoss

__all__ = [
    "SCHEDULES",
    "ClipLoss",
    "ColorLoss",
    "Guidance",
    "GuidanceError",
    "RangeLoss",
    "TotalVariationLoss",
    "clip_guidance",
    "color_guidance",
    "spherical_dist_loss",
]
_MODULES = {
    "SCHEDULES": "guide",
    "ClipLoss": "clip",
    "ColorLoss": "color",
    "Guidance": "guide",
    "GuidanceError": "options",
    "RangeLoss": "regularizers",
    "TotalVariationLoss": "regularizers",
    "clip_guidance": "presets",
    "color_guidance": "presets",
    "spherical_dist_loss": "clip",
}


def __getattr__(name: str) -> Any:
    """The losses and `Guidance`, imported when first used: the config checks
    (`difftune.guidance.options`) need no torch (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
