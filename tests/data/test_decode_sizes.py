"""Every common photo size decodes, and the crop equals a plain torchvision resize + centre crop."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from difftune.data.decode import Skipped, decode_image
from helpers.compose import compose_train, shrink

SIDES = (31, 57, 64, 97, 128, 150, 213, 255, 256, 300, 333, 427, 480, 511, 640)
IMAGE_SIZES = (32, 64, 128)


def photo(w: int, h: int, fmt: str) -> bytes:
    """Ramps across x and y (a wrong crop shifts them; resampling hardly changes them), encoded."""
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), 0 * xx + 90], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def reference(data: bytes, size: int) -> torch.Tensor:
    """torchvision: shorter side to `size` (bicubic, antialiased), centre crop, to [-1, 1]."""
    img = v2.functional.pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
    img = v2.functional.resize(img, size, v2.InterpolationMode.BICUBIC, antialias=True)
    img = v2.functional.center_crop(img, [size, size])
    return img.float() / 127.5 - 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_every_size_of_the_grid_decodes_like_torchvision(size, fmt):
    failures = []
    for w in SIDES:
        for h in SIDES:
            data = photo(w, h, fmt)
            out = decode_image(data, size)
            if isinstance(out, Skipped):
                failures.append(f"{w}x{h}: {out.reason}")
                continue
            assert out.shape == (3, size, size)
            error = (out - reference(data, size)).abs().mean().item()
            if error > 0.025:  # a corner crop of a 5:4 photo is 0.066 off; resampling 0.018
                failures.append(f"{w}x{h}: mean |difference| {error:.3f}")
    assert not failures, failures


@pytest.mark.parametrize("size", [64, 128])
def test_640x427_jpegs_decode_at_the_articles_sizes(size):
    """The most common camera/web size; its float crop box used to start below zero."""
    for w, h in [(640, 427), (427, 640)]:
        out = decode_image(photo(w, h, "JPEG"), size)
        assert isinstance(out, torch.Tensor) and out.shape == (3, size, size), (w, h, out)


def test_random_crops_stay_inside_the_image_and_move():
    """Red ramps 0..255 across the 640 px: a 427 px square from x = L has mean red
    (L + 213) / 639 * 255, from 85 (L = 0) to 170 (L = 213); the green ramp is the full height."""
    data = photo(640, 427, "PNG")
    torch.manual_seed(0)
    reds = []
    for _ in range(50):
        out = decode_image(data, 64, random_crop=True)
        assert isinstance(out, torch.Tensor) and out.shape == (3, 64, 64)
        red, green = ((out[:2].mean(dim=(1, 2)) + 1) * 127.5).tolist()
        assert 85 - 1.5 <= red <= 170 + 1.5 and abs(green - 127.5) < 1.5
        reds.append(red)
    assert max(reds) - min(reds) > 40  # the crops really move, not always the centre


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 128])
def test_a_folder_of_640x427_photos_trains(size, tmp_path, tiny_pipeline_dir):
    """Such a folder used to be refused outright: "no decodable image"."""
    from difftune.run.train import train

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        (folder / f"IMG_{i:04d}.JPG").write_bytes(photo(640, 427, "JPEG"))
    cfg = compose_train(
        f"model.pretrained={tiny_pipeline_dir}", "data=imagefolder", f"data.data_dir={folder}",
        f"data.image_size={size}", "data.batch_size=2", "data.num_workers=0",
        output_dir=tmp_path / "run",
    )  # fmt: skip
    metrics = train(shrink(cfg, steps=2))
    assert metrics["data/skipped"] == 0 and 0 < metrics["train/loss"] < 2
