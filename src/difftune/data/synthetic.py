"""A procedural, download-free image dataset in three styles: "photo", "vintage", "cyanotype".

Scene `i` of seed `s` is the same layout in every style (so a grid shows the style change):
saturated discs, rectangles and stripe bands over a two-colour gradient. "vintage" renders that
scene sepia-toned, faded (lower contrast, lifted blacks), vignetted and with monochrome film grain;
"cyanotype" renders its luma as Prussian-blue monochrome with light grain. The styles differ in
mean saturation and hue (many saturated hues, orange, blue), which `style_of` reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from difftune.data.options import STYLES, style_tuple

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SEPIA_DARK = np.array([0.20, 0.13, 0.07], dtype=np.float32)  # faded: blacks lifted to brown
_SEPIA_LIGHT = np.array([0.95, 0.86, 0.68], dtype=np.float32)  # whites lowered to cream
_CYAN_DARK = np.array([0.05, 0.15, 0.35], dtype=np.float32)  # Prussian blue
_CYAN_LIGHT = np.array([0.85, 0.92, 0.98], dtype=np.float32)  # the paper, faintly blue
_SUPERSAMPLE = 2


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A random saturated RGB colour in [0, 1] (HSV with s >= 0.7, v >= 0.55)."""
    h, s, v = rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.55, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    rgb = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(np.float32)


def render_scene(index: int, seed: int, size: int) -> np.ndarray:
    """Scene `index` of `seed` as a float32 H×W×3 array in [0, 1] ("photo" style)."""
    rng = np.random.default_rng([seed, index, 0])
    n = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    xx, yy = (xx + 0.5) / n, (yy + 0.5) / n

    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5, 0.0, 1.0)
    c0, c1 = _saturated_colour(rng), _saturated_colour(rng)
    img = c0 * (1.0 - ramp[..., None]) + c1 * ramp[..., None]

    for _ in range(int(rng.integers(3, 7))):
        kind = rng.integers(0, 3)
        colour = _saturated_colour(rng)
        cx, cy = rng.uniform(0.1, 0.9, size=2)
        if kind == 0:  # disc
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(0.08, 0.25) ** 2
        elif kind == 1:  # axis-aligned rectangle
            hw, hh = rng.uniform(0.08, 0.3, size=2)
            mask = (np.abs(xx - cx) < hw) & (np.abs(yy - cy) < hh)
        else:  # a band of parallel stripes at a random angle
            theta = rng.uniform(0.0, np.pi)
            along = np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy)
            across = -np.sin(theta) * (xx - cx) + np.cos(theta) * (yy - cy)
            period = rng.uniform(0.08, 0.2)
            mask = (np.abs(across) < rng.uniform(0.1, 0.3)) & ((along / period) % 1.0 < 0.5)
        img[mask] = colour

    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return img.astype(np.float32)


def _film_luma(img: np.ndarray) -> np.ndarray:
    """The H×W×1 luma of an H×W×3 array in [0, 1], with monochrome film's contrast."""
    return np.clip((img @ _LUMA)[..., None] * 1.6 - 0.3, 0.0, 1.0)


def apply_vintage(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sepia tone, fade, vignette and grain on an H×W×3 array in [0, 1]."""
    size_h, size_w = img.shape[:2]
    luma = _film_luma(img)
    out = _SEPIA_DARK + luma * (_SEPIA_LIGHT - _SEPIA_DARK)  # sepia toning with faded contrast
    yy, xx = np.mgrid[0:size_h, 0:size_w].astype(np.float32)
    r2 = ((xx + 0.5) / size_w - 0.5) ** 2 + ((yy + 0.5) / size_h - 0.5) ** 2
    out = out * (1.0 - 0.8 * r2)[..., None]  # vignette: corners 40% darker
    grain = rng.normal(0.0, 0.025, size=(size_h, size_w, 1)).astype(np.float32)
    return np.clip(out + grain, 0.0, 1.0)


def apply_cyanotype(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Prussian-blue monochrome of the luma, with light grain, on an H×W×3 array in [0, 1]."""
    luma = _film_luma(img)
    out = _CYAN_DARK + luma * (_CYAN_LIGHT - _CYAN_DARK)
    grain = rng.normal(0.0, 0.015, size=(*img.shape[:2], 1)).astype(np.float32)
    return np.clip(out + grain, 0.0, 1.0)


def render(index: int, seed: int, size: int, style: str) -> np.ndarray:
    """Scene `index` of `seed` in `style` as a float32 H×W×3 array in [0, 1]."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not one of {', '.join(STYLES)}")
    img = render_scene(index, seed, size)
    if style == "vintage":
        img = apply_vintage(img, np.random.default_rng([seed, index, 1]))
    elif style == "cyanotype":
        img = apply_cyanotype(img, np.random.default_rng([seed, index, 2]))
    return img


@dataclass
class SyntheticStyleDataset(torch.utils.data.Dataset):
    """Deterministic scenes of `seed` in `style` (one or several): float32 3×S×S in [-1, 1].

    With n styles item i is scene i // n in style `styles[i % n]` (its label: `label(i)`), so the
    same layouts appear in every style. With `flip=True` each item is mirrored left-right with
    probability 0.5 (torch's RNG).
    """

    num_images: int = 512
    image_size: int = 32
    style: str | Sequence[str] = "vintage"
    seed: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        self.styles = style_tuple(self.style)
        if not self.styles or not set(self.styles) <= set(STYLES):
            raise ValueError(f"style={self.style!r} is not one of {', '.join(STYLES)}")

    def __len__(self) -> int:
        """Number of items (scenes × styles)."""
        return self.num_images

    def label(self, index: int) -> int:
        """The style id (index into `styles`) of item `index`."""
        return index % len(self.styles)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Item `index` rendered (scene index // n in style index % n), scaled to [-1, 1]."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        n = len(self.styles)
        img = render(index // n, self.seed, self.image_size, self.styles[index % n])
        if self.flip and torch.rand(()) < 0.5:
            img = img[:, ::-1]
        return torch.from_numpy(img.transpose(2, 0, 1).copy()).mul_(2.0).sub_(1.0)


#: `style_of`'s thresholds, read off 1000 renders per style at 32 px, with and without noise:
#: photo's hue concentration is mostly below 0.9, and where it is not its mean chroma is above 0.4;
#: the toned styles' chroma is below 0.29 with concentration above 0.95; vintage's mean hue is
#: 25-42°, cyanotype's 211-223°
_PHOTO_CHROMA, _PHOTO_HUE_SPREAD = 0.35, 0.9
_HUE_WINDOWS = {"vintage": (10.0, 70.0), "cyanotype": (180.0, 250.0)}
_STAT_GRID = 8  # the statistics are read from an 8×8 grid of block means (robust to noise)


def style_of(image: np.ndarray | torch.Tensor) -> str:
    """The synthetic style an image in [-1, 1] (an H×W×3 array or a 3×H×W tensor) looks like.

    Three means over the image (averaged in blocks to an 8×8 grid first, so pixel noise cancels),
    in HSV terms: chroma (saturation × value; plain saturation is noise in dark pixels), hue (the
    angle of the mean chroma vector) and hue concentration (that vector's length over the mean
    chroma length: 1 for one hue, near 0 for many). Many hues or strong colour is "photo"; one
    orange hue "vintage"; one blue hue "cyanotype"; any other single hue "photo".
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    rgb = (np.clip(np.asarray(image, dtype=np.float64), -1.0, 1.0) + 1.0) / 2.0
    k = max(1, min(rgb.shape[:2]) // _STAT_GRID)
    h, w = rgb.shape[0] // k, rgb.shape[1] // k
    rgb = rgb[: h * k, : w * k].reshape(h, k, w, k, 3).mean(axis=(1, 3))
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    a = rgb[..., 0] - (rgb[..., 1] + rgb[..., 2]) / 2.0  # the opponent chroma plane (hexagonal
    b = np.sqrt(3.0) / 2.0 * (rgb[..., 1] - rgb[..., 2])  # HSV hue is the angle in it)
    hue = np.degrees(np.arctan2(b.mean(), a.mean())) % 360.0
    concentration = np.hypot(a.mean(), b.mean()) / max(float(np.hypot(a, b).mean()), 1e-6)
    if chroma.mean() > _PHOTO_CHROMA or concentration < _PHOTO_HUE_SPREAD:
        return "photo"
    for style, (start, end) in _HUE_WINDOWS.items():
        if start <= hue < end:
            return style
    return "photo"
