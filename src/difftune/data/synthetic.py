"""A procedural, download-free image dataset in two styles: "photo" and sepia "vintage".

Scene `i` of seed `s` is the same layout in both styles (so a grid shows the style change):
saturated discs, rectangles and stripe bands over a two-colour gradient. "vintage" renders that
scene sepia-toned, faded (lower contrast, lifted blacks), vignetted and with monochrome film grain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STYLES = ("photo", "vintage")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SEPIA_DARK = np.array([0.20, 0.13, 0.07], dtype=np.float32)  # faded: blacks lifted to brown
_SEPIA_LIGHT = np.array([0.95, 0.86, 0.68], dtype=np.float32)  # whites lowered to cream
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


def apply_vintage(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sepia tone, fade, vignette and grain on an H×W×3 array in [0, 1]."""
    size_h, size_w = img.shape[:2]
    luma = np.clip((img @ _LUMA)[..., None] * 1.6 - 0.3, 0.0, 1.0)  # monochrome film's contrast
    out = _SEPIA_DARK + luma * (_SEPIA_LIGHT - _SEPIA_DARK)  # sepia toning with faded contrast
    yy, xx = np.mgrid[0:size_h, 0:size_w].astype(np.float32)
    r2 = ((xx + 0.5) / size_w - 0.5) ** 2 + ((yy + 0.5) / size_h - 0.5) ** 2
    out = out * (1.0 - 0.8 * r2)[..., None]  # vignette: corners 40% darker
    grain = rng.normal(0.0, 0.025, size=(size_h, size_w, 1)).astype(np.float32)
    return np.clip(out + grain, 0.0, 1.0)


def render(index: int, seed: int, size: int, style: str) -> np.ndarray:
    """Scene `index` of `seed` in `style` as a float32 H×W×3 array in [0, 1]."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not one of {', '.join(STYLES)}")
    img = render_scene(index, seed, size)
    if style == "vintage":
        img = apply_vintage(img, np.random.default_rng([seed, index, 1]))
    return img


@dataclass
class SyntheticStyleDataset(torch.utils.data.Dataset):
    """Deterministic scenes of `seed` in `style`: float32 3×S×S tensors in [-1, 1].

    With `flip=True` each item is mirrored left-right with probability 0.5 (torch's RNG).
    """

    num_images: int = 512
    image_size: int = 32
    style: str = "vintage"
    seed: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style={self.style!r} is not one of {', '.join(STYLES)}")

    def __len__(self) -> int:
        """Number of scenes."""
        return self.num_images

    def __getitem__(self, index: int) -> torch.Tensor:
        """Scene `index` rendered in this dataset's style, scaled to [-1, 1]."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        img = render(index, self.seed, self.image_size, self.style)
        if self.flip and torch.rand(()) < 0.5:
            img = img[:, ::-1]
        return torch.from_numpy(img.transpose(2, 0, 1).copy()).mul_(2.0).sub_(1.0)
