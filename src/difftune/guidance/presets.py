"""The article's two guidances from flat keywords: what `conf/guidance/{color,clip}.yaml` build.

Each config key is one keyword here, so `guidance.scale=60` or `guidance.prompt="..."` on the
command line set it directly; the values themselves live once, in the config files. The keys
`scale`, `through_unet`, `schedule`, `apply_to`, `grad_clip_rms`, `clip_x0` and `per_image` go to
`Guidance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from difftune.guidance.clip import ClipLoss
from difftune.guidance.color import ColorLoss
from difftune.guidance.guide import Guidance


def color_guidance(*, target_rgb: Sequence[float], **guidance: Any) -> Guidance:
    """`Guidance(ColorLoss(target_rgb), ...)`: the article's colour guidance (scale about 40)."""
    return Guidance(ColorLoss(target_rgb), **guidance)


def clip_guidance(
    *,
    prompt: str | Sequence[str],
    model_name: str,
    pretrained: str | None,
    n_cuts: int,
    cut_batches: int,
    **guidance: Any,
) -> Guidance:
    """`Guidance(ClipLoss(prompt, ...), ...)`: the article's CLIP guidance (scale about 8)."""
    return Guidance(ClipLoss(prompt, model_name, pretrained, n_cuts, cut_batches), **guidance)
