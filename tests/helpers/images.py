"""Image files made in the test: two-colour halves, JPEG bytes, a folder of every mode and fault."""

import io
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
COLOUR_LABEL = "guided: colour (0.8, 0.4, 0.6), scale 40"  # conf/guidance/color.yaml's caption


def label_width(label: str) -> int:
    """The width a montage gives a panel's label (PIL's default font, 2 px either side)."""
    return 4 + math.ceil(ImageDraw.Draw(Image.new("1", (1, 1))).textlength(label))


def left_right(left: tuple, right: tuple, size=(40, 20)) -> Image.Image:
    """An RGB image whose left half is `left` and right half is `right`."""
    img = Image.new("RGB", size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    """`img` encoded as a JPEG."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def write_mixed_folder(folder: Path) -> None:
    """Seven decodable images in many modes and three broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    left_right(RED, BLUE).save(folder / "rgb.png")
    Image.new("L", (30, 30), 100).save(folder / "gray.png")
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (15, 0, 30, 30))
    rgba.save(folder / "rgba.png")
    palette = Image.new("P", (30, 30), 1)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(0, (15, 0, 30, 30))
    palette.save(folder / "palette.png", transparency=0)
    Image.new("CMYK", (30, 30), (255, 0, 0, 0)).save(folder / "cmyk.jpg", quality=95)
    sixteen = np.full((30, 30), 65535, dtype=np.uint16)
    sixteen[:, 15:] = 128 * 257
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180 to display: left/right swap
    (folder / "exif.jpg").write_bytes(jpeg_bytes(left_right(RED, BLUE), exif=exif.tobytes()))
    good = jpeg_bytes(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    )
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image\n")


def loader_images(loader) -> tuple[list[torch.Tensor], Counter]:
    """All image tensors of a loader and a count of the skipped reasons."""
    images, skipped = [], Counter()
    for batch in loader:
        assert set(batch) == {"images", "skipped", "skipped_files"}
        images.extend(batch["images"])
        skipped.update(batch["skipped"])
    return images, skipped
