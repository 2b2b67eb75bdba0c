"""Guided sampling: losses on the predicted clean image x̂0 and the Guidance that applies them."""

from difftune.guidance.clip import ClipLoss, spherical_dist_loss
from difftune.guidance.color import ColorLoss
from difftune.guidance.guide import SCHEDULES, Guidance, GuidanceError
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
