"""Project-side image decoding: any file or bytes to an RGB training tensor, or a skip marker.

`datasets` cannot skip a corrupt image, so the image column is read undecoded and decoded here.
Alpha is composited on white; EXIF orientation is applied; float and 16/32-bit greyscale map to
[0, 1] by their real range (`high_depth_range`), and non-finite pixels skip the image.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

ImageSource = str | Path | bytes
"""A file path or the encoded bytes of one image."""

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


class NonFinitePixelsError(ValueError):
    """A float image holds NaN or inf pixels: there is no right way to show it."""


@dataclass(frozen=True)
class Skipped:
    """Marker returned instead of a tensor for an image that could not be decoded."""

    reason: str
    source: str = ""


def skip_reason(exc: BaseException) -> str:
    """A short reason (for batch["skipped"]) describing why decoding raised `exc`."""
    if isinstance(exc, Image.DecompressionBombError):
        return "decompression bomb"
    if isinstance(exc, NonFinitePixelsError):
        return "non-finite pixels"
    if isinstance(exc, UnidentifiedImageError):
        return "unreadable"
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return "truncated"
    if isinstance(exc, OSError | SyntaxError | EOFError):
        return "corrupt"
    return f"decode error ({type(exc).__name__})"


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Blend an image with transparency onto a white background."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def high_depth_range(mode: str, arr: np.ndarray) -> tuple[float, float]:
    """The values that mean black and white: the type's range, widened to the data's own.

    Float is [0, 1]; 16-bit is [0, 65535]; 32-bit int, and float holding whole numbers above 1
    (8- or 16-bit values saved as float), is 8- or 16-bit data by its maximum. An image whose
    values go beyond (HDR floats, negative values) is scaled by its own minimum and maximum.
    """
    if mode == "F" and not (arr.max() > 1.0 and np.array_equal(arr, np.rint(arr))):
        black, white = 0.0, 1.0
    elif mode in _SIXTEEN_BIT_MODES or arr.max() > 255:
        black, white = 0.0, 65535.0
    else:
        black, white = 0.0, 255.0
    return min(black, float(arr.min())), max(white, float(arr.max()))


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """A float, 16-bit or 32-bit int greyscale image as 8-bit "L", by `high_depth_range`."""
    arr = np.asarray(img, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise NonFinitePixelsError(f"{int((~np.isfinite(arr)).sum())} NaN/inf pixels")
    black, white = high_depth_range(img.mode, arr)
    return Image.fromarray(np.rint((arr - black) * (255.0 / (white - black))).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on white, 16-bit rescaled)."""
    if img.mode in ("P", "RGB", "L") and "transparency" in img.info:  # a palette or colour key
        return _composite_on_white(img)
    if img.mode == "RGB":
        return img
    if img.mode in _ALPHA_MODES:
        return _composite_on_white(img)
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return _high_depth_to_l(img).convert("RGB")
    return img.convert("RGB")


def _open(fp: str | Path | io.BytesIO, draft_size: int | None) -> Image.Image:
    """`Image.open`, in draft mode for a JPEG. PIL refuses an image of over twice
    `Image.MAX_IMAGE_PIXELS` as a decompression bomb before a draft can shrink it: a JPEG is
    opened again unchecked and refused only if its reduced decode is still that large."""
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError:
        if draft_size is None:
            raise
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            if isinstance(fp, io.BytesIO):
                fp.seek(0)
            img = Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        if img.format != "JPEG":  # no reduced decode: the refusal stands
            img.close()
            raise
        img.draft("RGB", (draft_size, draft_size))
        if limit is not None and img.width * img.height > 2 * limit:
            img.close()
            raise Image.DecompressionBombError(
                f"{img.width}x{img.height} even in draft mode"
            ) from None
        return img
    if draft_size is not None:
        img.draft("RGB", (draft_size, draft_size))
    return img


def open_image(source: ImageSource, draft_size: int | None = None) -> Image.Image:
    """Decode `source` to an upright RGB image; JPEGs decode reduced (both sides >= draft_size).

    Raises on unreadable data (see `skip_reason`); `decode_image` turns that into a `Skipped`.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with _open(fp, draft_size) as img:
        img.load()
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except (ValueError, TypeError, KeyError, SyntaxError, OSError) as exc:
            log.debug("ignoring unreadable EXIF orientation: %s", exc)  # keep the pixels
        rgb = to_rgb(img)
        return img.copy() if rgb is img and img.readonly else rgb  # detach from a memory map


def resize_crop(
    img: Image.Image,
    size: int,
    random_crop: bool = False,
    generator: torch.Generator | None = None,
) -> Image.Image:
    """Crop the largest centre (or random) square and resize it to `size`, in one resample.

    The crop box is whole source pixels, computed once, so it always lies inside the image.
    """
    w, h = img.size
    side = min(w, h)
    if random_crop:
        u = torch.rand(2, generator=generator).tolist()
        left, top = (
            min(int(u[0] * (w - side + 1)), w - side),
            min(int(u[1] * (h - side + 1)), h - side),
        )
    else:
        left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image to a contiguous float32 C×H×W tensor scaled to [-1, 1]."""
    arr = np.asarray(img).transpose(2, 0, 1).astype(np.float32, order="C")
    np.divide(arr, 127.5, out=arr)
    arr -= 1.0
    return torch.from_numpy(arr)


def decode_image(
    source: ImageSource,
    image_size: int,
    flip: bool = False,
    random_crop: bool = False,
) -> torch.Tensor | Skipped:
    """Decode, resize/crop, maybe flip (p=0.5) and scale one image, or say why it is skipped."""
    name = source if isinstance(source, str | Path) else "<bytes>"
    try:
        empty = len(source) == 0 if isinstance(source, bytes) else os.path.getsize(source) == 0
        if empty:
            return Skipped("empty file", str(name))
        img = resize_crop(open_image(source, draft_size=image_size), image_size, random_crop)
    except Exception as exc:  # any decoder failure becomes a counted skip
        reason = skip_reason(exc)
        log.debug("skipping image %s: %s (%s)", name, reason, exc)
        return Skipped(reason, str(name))
    if flip and torch.rand(()) < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(img)


class DecodedImageDataset(torch.utils.data.Dataset):
    """Images from a sequence of paths/bytes, decoded on access; broken ones come back `Skipped`."""

    def __init__(
        self,
        records: Sequence[ImageSource],
        image_size: int,
        flip: bool = False,
        random_crop: bool = False,
    ) -> None:
        self.records = records
        self.image_size = image_size
        self.flip = flip
        self.random_crop = random_crop

    def __len__(self) -> int:
        """Number of records (including ones that will turn out broken)."""
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor | Skipped:
        """The decoded C×H×W tensor in [-1, 1], or a `Skipped` marker with a reason."""
        return decode_image(self.records[index], self.image_size, self.flip, self.random_crop)


def collate(items: Sequence, image_size: int, labelled: bool = False) -> dict:
    """Stack the decoded images; list the skipped ones' reasons and files:
    {"images", "skipped", "skipped_files"}, plus "labels" (long, one per kept image) when the
    items are `labelled` (image, class id) pairs."""
    pairs = items if labelled else [(item, -1) for item in items]
    images = [item for item, _ in pairs if isinstance(item, torch.Tensor)]
    labels = [label for item, label in pairs if isinstance(item, torch.Tensor)]
    skipped = [item for item, _ in pairs if isinstance(item, Skipped)]
    batch = {
        "images": torch.stack(images) if images else torch.empty(0, 3, image_size, image_size),
        "skipped": [item.reason for item in skipped],
        "skipped_files": [item.source for item in skipped],
    }
    if labelled:
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


def make_collate(image_size: int, labelled: bool = False) -> partial:
    """A picklable collate_fn (works with num_workers > 0) for batches of `image_size` images
    (of (image, class id) pairs when `labelled`)."""
    return partial(collate, image_size=image_size, labelled=labelled)
