"""Colour loss on x̂0 (the article's `color_loss`, from the HF diffusion-models-class, unit 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from difftune.guidance.options import color_target


class ColorLoss:
    """Mean |x̂0 − (2·c − 1)| over pixels, channels and batch, c an RGB colour in [0, 1]."""

    def __init__(self, target_rgb: Sequence[float] = (0.8, 0.4, 0.6)) -> None:
        self.target_rgb = color_target(target_rgb)

    @property
    def label(self) -> str:
        """What a picture's caption calls this loss."""
        return "colour (" + ", ".join(f"{v:g}" for v in self.target_rgb) + ")"

    def __repr__(self) -> str:
        return f"ColorLoss(target_rgb={self.target_rgb})"

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """The loss of a batch x̂0 (B×3×H×W, model space [-1, 1])."""
        target = torch.tensor(self.target_rgb, device=x0.device) * 2 - 1  # [0, 1] -> [-1, 1]
        return (x0 - target.to(x0.dtype)[None, :, None, None]).abs().mean()
