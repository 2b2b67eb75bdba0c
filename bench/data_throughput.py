"""Images/s turning 1024 px JPEGs into 256 px training tensors: difftune vs the article's pipeline.

Both run in this one process on one thread over the same files, after one warm-up pass. Each
image is timed alternately by both pipelines for a few rounds and its fastest time kept (so load
from other processes on a shared machine does not bias either side); rates are images / summed
times. The last line is the speed-up: `ratio X.XX`.
Usage: python bench/data_throughput.py [--num-images 64] [--source-size 1024] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torchvision import transforms

from difftune.data.decode import DecodedImageDataset


def write_photo_like_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[str]:
    """Write `count` smooth-plus-texture size×size JPEGs (quality 90); return their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.integers(0, size, size=2)
            r = int(rng.integers(size // 40, size // 6))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        img = img.filter(ImageFilter.GaussianBlur(2))
        noise = rng.normal(0.0, 6.0, size=(size, size, 3))
        pixels = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def article_pipeline(size: int) -> Callable[[str], torch.Tensor]:
    """The article's loading: full decode, torchvision Resize/Flip/ToTensor/Normalize."""
    transform = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    return lambda path: transform(Image.open(path).convert("RGB"))


def difftune_pipeline(paths: list[str], size: int) -> Callable[[int], torch.Tensor]:
    """difftune's training-set item: draft decode, one resize+crop, flip, numpy→torch."""
    dataset = DecodedImageDataset(paths, size, flip=True)
    return dataset.__getitem__


def seconds(fn: Callable, key: object, expected: tuple[int, ...]) -> float:
    """Wall time of one call `fn(key)` (checking the output's shape)."""
    start = time.perf_counter()
    out = fn(key)
    elapsed = time.perf_counter() - start
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == expected, out
    return elapsed


def main() -> None:
    """Write the JPEGs, time both pipelines, print both rates and then the ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--source-size", type=int, default=1024)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    expected = (3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photo_like_jpegs(Path(tmp), args.num_images, args.source_size)
        article, ours = article_pipeline(args.size), difftune_pipeline(paths, args.size)
        for i, path in enumerate(paths):  # warm-up (and page cache)
            seconds(article, path, expected), seconds(ours, i, expected)
        article_total = our_total = 0.0
        for i, path in enumerate(paths):
            times = [
                (seconds(article, path, expected), seconds(ours, i, expected))
                for _ in range(args.rounds)
            ]
            article_total += min(t[0] for t in times)
            our_total += min(t[1] for t in times)
    a, o = len(paths) / article_total, len(paths) / our_total
    print(f"{args.num_images} JPEGs {args.source_size}px -> {args.size}px tensors, 1 thread")
    print(f"article  {a:8.1f} images/s")
    print(f"difftune {o:8.1f} images/s")
    print(f"ratio {o / a:.2f}")


if __name__ == "__main__":
    main()
