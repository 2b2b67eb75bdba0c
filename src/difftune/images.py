"""Image helpers: model space [-1, 1] to [0, 1], PNG grids and PIL images."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from PIL import Image


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to [0, 1], clamped."""
    return (x.detach() / 2 + 0.5).clamp(0, 1)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a batch (model space, B×C×H×W) as one PNG grid; nrow defaults to ⌈√B⌉."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    torchvision.utils.save_image(to_unit(x).float().cpu(), path, nrow=nrow)
    return path


def to_pil_list(x: torch.Tensor) -> list[Image.Image]:
    """A batch in model space (B×C×H×W) as a list of RGB (or L) PIL images."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    arrays = (to_unit(x).float().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]
