"""Image priors to add to a guidance loss (as in CLIP-guided diffusion, Crowson 2021)."""

from __future__ import annotations

import torch


class TotalVariationLoss:
    """Mean squared total variation of x̂0 (Rudin, Osher & Fatemi 1992, smoothed)."""

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        dx = x0[..., :, 1:] - x0[..., :, :-1]
        dy = x0[..., 1:, :] - x0[..., :-1, :]
        return dx.pow(2).mean() + dy.pow(2).mean()

    def __repr__(self) -> str:
        return "TotalVariationLoss()"


class RangeLoss:
    """Mean squared excess of x̂0 outside the model range [-1, 1]."""

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        return (x0 - x0.clamp(-1, 1)).pow(2).mean()

    def __repr__(self) -> str:
        return "RangeLoss()"
