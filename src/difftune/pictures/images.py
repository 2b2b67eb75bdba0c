"""Image helpers: model space [-1, 1] to [0, 1], PNG grids, PIL images (diffusers' converters)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from diffusers.utils import numpy_to_pil, pt_to_pil
from PIL import Image


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to [0, 1], clamped."""
    return (x.detach() / 2 + 0.5).clamp(0, 1)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """A detached float32 batch (B×C×H×W) with NaN as -1 (black), as a 3-D tensor as one image."""
    x = x.detach().float()
    return torch.nan_to_num(x.unsqueeze(0) if x.dim() == 3 else x, nan=-1.0)


def grid_image(x: torch.Tensor, nrow: int | None = None) -> Image.Image:
    """A batch (model space) as one picture, `nrow` a row (default ⌈√B⌉), 2 px black gaps."""
    x = _finite(x)
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    # torchvision's make_grid, not diffusers' make_image_grid: that one has no gaps between the
    # images and needs exactly rows × cols of them (tests/pictures/test_pictures.py shows both)
    grid = torchvision.utils.make_grid(to_unit(x).cpu(), nrow=nrow)
    return numpy_to_pil(grid.permute(1, 2, 0).numpy())[0]


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a batch (model space, B×C×H×W) as one PNG grid; nrow defaults to ⌈√B⌉."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(x, nrow).save(path)
    return path


def to_pil_list(x: torch.Tensor) -> list[Image.Image]:
    """A batch in model space (B×C×H×W) as a list of RGB (or L) PIL images (NaN pixels black)."""
    return pt_to_pil(_finite(x))


def montage(
    panels: list[tuple[str, Image.Image]], title: str | None = None, gap: int = 8
) -> Image.Image:
    """Pictures side by side on white, each under its label, all under a title line (a slot
    widened to its label, and the canvas to the title, where the pictures are narrower)."""
    from PIL import ImageDraw

    def text_width(text: str) -> int:
        return 4 + math.ceil(ImageDraw.Draw(Image.new("1", (1, 1))).textlength(text))

    line = 14
    top = line * (2 if title else 1)
    slots = [max(p.width, text_width(label)) for label, p in panels]
    width = sum(slots) + gap * (len(panels) - 1)
    if title:
        width = max(width, text_width(title))
    canvas = Image.new("RGB", (width, top + max(p.height for _, p in panels)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 1), title, fill="black")
    left = 0
    for (label, picture), slot in zip(panels, slots, strict=True):
        canvas.paste(picture, (left, top))
        draw.text((left + 2, top - line + 1), label, fill="black")
        left += slot + gap
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
    nrow: int | None = None,
) -> Path:
    """Batches (model space) as labelled grids side by side in one PNG, under a title line.

    Images smaller than `min_side` are enlarged by a whole factor with nearest-neighbour
    resampling, so a 32 px grid is readable and each pixel stays a sharp square. `nrow` images
    a row (default ⌈√B⌉): one row per class in a class-conditional grid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, math.ceil(min_side / panels[0][1].shape[-1]))
    pictures = [(label, enlarged(grid_image(x, nrow), scale)) for label, x in panels]
    montage(pictures, title, gap).save(path)
    return path
