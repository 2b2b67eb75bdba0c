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


def save_panels(panels: list[tuple[str, torch.Tensor]], path: str | Path, gap: int = 8) -> Path:
    """Several batches (model space) as labelled grids side by side in one PNG."""
    from PIL import ImageDraw

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grids = []
    for _, x in panels:
        nrow = max(1, math.ceil(math.sqrt(x.shape[0])))
        grid = torchvision.utils.make_grid(to_unit(x).float().cpu(), nrow=nrow)
        grids.append(to_pil_list(grid.unsqueeze(0) * 2 - 1)[0])
    top = 14
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, top + max(g.height for g in grids)), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for (label, _), grid in zip(panels, grids, strict=True):
        canvas.paste(grid, (left, top))
        draw.text((left + 2, 1), label, fill="black")
        left += grid.width + gap
    canvas.save(path)
    return path
