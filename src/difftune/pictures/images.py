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


def montage(
    panels: list[tuple[str, Image.Image]], title: str | None = None, gap: int = 8
) -> Image.Image:
    """Pictures side by side on white, each under its label, all under a title line."""
    from PIL import ImageDraw

    line = 14
    top = line * (2 if title else 1)
    width = sum(p.width for _, p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, top + max(p.height for _, p in panels)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 1), title, fill="black")
    left = 0
    for label, picture in panels:
        canvas.paste(picture, (left, top))
        draw.text((left + 2, top - line + 1), label, fill="black")
        left += picture.width + gap
    return canvas


def enlarged(picture: Image.Image, factor: int) -> Image.Image:
    """`picture` scaled by a whole `factor` with nearest neighbours (pixels stay sharp squares)."""
    return picture.resize(
        (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
    )


def save_panels(
    panels: list[tuple[str, torch.Tensor]],
    path: str | Path,
    title: str | None = None,
    gap: int = 8,
    min_side: int = 64,
) -> Path:
    """Batches (model space) as labelled grids side by side in one PNG, under a title line.

    Images smaller than `min_side` are enlarged by a whole factor with nearest-neighbour
    resampling, so a 32 px grid is readable and each pixel stays a sharp square.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, math.ceil(min_side / panels[0][1].shape[-1]))
    pictures = []
    for label, x in panels:
        nrow = max(1, math.ceil(math.sqrt(x.shape[0])))
        grid = to_pil_list(torchvision.utils.make_grid(to_unit(x).float().cpu(), nrow=nrow) * 2 - 1)
        pictures.append((label, enlarged(grid[0], scale)))
    montage(pictures, title, gap).save(path)
    return path
