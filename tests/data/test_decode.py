"""Robust decoding: every image mode to RGB, EXIF orientation, broken files skipped with reasons."""

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from difftune.data.decode import Skipped, collate, decode_image, open_image, skip_reason
from helpers.images import BLUE, RED, WHITE, jpeg_bytes, left_right, write_mixed_folder


def pixel(path: Path, xy: tuple[int, int]) -> tuple[int, ...]:
    """The RGB value at `xy` of the image at `path` as decoded by difftune."""
    img = open_image(str(path))
    assert img.mode == "RGB"
    return img.getpixel(xy)


def close(a: tuple, b: tuple, tol: int = 8) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def test_modes_are_converted_to_rgb_correctly(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path)
    assert pixel(tmp_path / "gray.png", (5, 5)) == (100, 100, 100)
    assert pixel(tmp_path / "rgba.png", (5, 5)) == RED
    assert pixel(tmp_path / "rgba.png", (25, 5)) == WHITE  # transparent -> white, not black
    assert pixel(tmp_path / "palette.png", (5, 5)) == (0, 255, 0)
    assert pixel(tmp_path / "palette.png", (25, 5)) == WHITE
    assert close(pixel(tmp_path / "cmyk.jpg", (15, 15)), (0, 255, 255))
    assert pixel(tmp_path / "sixteen.png", (5, 5)) == (255, 255, 255)
    assert pixel(tmp_path / "sixteen.png", (25, 5)) == (128, 128, 128)  # scaled, not clipped


def test_a_colour_key_is_transparent_too(tmp_path: Path) -> None:
    """PNG's tRNS colour key on RGB and greyscale: its pixels are composited on white."""
    for mode, key, kept in [("RGB", (10, 20, 30), (200, 0, 0)), ("L", 0, 90)]:
        img = Image.new(mode, (8, 8), key)
        img.paste(kept, (0, 0, 4, 8))
        img.save(tmp_path / f"{mode}.png", transparency=key)
        decoded = open_image(str(tmp_path / f"{mode}.png"))
        assert decoded.getpixel((6, 4)) == WHITE
        assert decoded.getpixel((1, 4)) == (kept if mode == "RGB" else (kept,) * 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path)
    assert close(pixel(tmp_path / "exif.jpg", (3, 10)), BLUE, 40)
    assert close(pixel(tmp_path / "exif.jpg", (36, 10)), RED, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: left half ends up on top
    (tmp_path / "rot.jpg").write_bytes(jpeg_bytes(left_right(RED, BLUE), exif=exif.tobytes()))
    img = open_image(str(tmp_path / "rot.jpg"))
    assert img.size == (20, 40)
    assert close(img.getpixel((10, 3)), RED, 40) and close(img.getpixel((10, 36)), BLUE, 40)


def test_broken_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path)
    reasons = {
        name: decode_image(str(tmp_path / name), 16)
        for name in ("truncated.jpg", "empty.png", "text.png")
    }
    assert reasons == {
        "truncated.jpg": Skipped("truncated", str(tmp_path / "truncated.jpg")),
        "empty.png": Skipped("empty file", str(tmp_path / "empty.png")),
        "text.png": Skipped("unreadable", str(tmp_path / "text.png")),
    }
    assert decode_image(b"", 16) == Skipped("empty file", "<bytes>")
    assert skip_reason(PermissionError(13, "Permission denied")) == "permission denied"


def test_a_jpeg_too_large_for_pil_decodes_reduced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over PIL's pixel limit at full size, within it in draft mode (a panorama, a scan)."""
    data = jpeg_bytes(left_right(RED, BLUE, size=(800, 400)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # 800x400 > 2x: a "bomb"
    x = decode_image(data, 16)  # DCT-scaled by 1/8: 100x50, under the limit
    assert isinstance(x, torch.Tensor) and x.shape == (3, 16, 16)
    assert close(tuple(((x[:, 8, 0] + 1) * 127.5).round().int().tolist()), RED, 30)
    assert Image.MAX_IMAGE_PIXELS == 100 * 100  # the limit is back
    assert decode_image(data, 300).reason == "decompression bomb"  # 400x200 at 1/2: still over
    png = io.BytesIO()
    left_right(RED, BLUE, size=(800, 400)).save(png, "PNG")
    assert decode_image(png.getvalue(), 16).reason == "decompression bomb"  # no draft for PNG


def test_large_jpeg_is_decoded_in_draft_mode(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    left_right(RED, BLUE, size=(1024, 768)).save(path, quality=90)
    assert open_image(str(path)).size == (1024, 768)
    assert open_image(str(path), draft_size=128).size == (256, 192)  # DCT-scaled by 1/4
    x = decode_image(str(path), 128)
    assert x.shape == (3, 128, 128)
    assert close(tuple(((x[:, 64, 5] + 1) * 127.5).round().int().tolist()), RED, 20)


@pytest.mark.parametrize("size", [16, 24, 33])
def test_decode_shape_range_and_center_crop(tmp_path: Path, size: int) -> None:
    path = tmp_path / "wide.png"
    img = Image.new("RGB", (90, 30), RED)
    img.paste(BLUE, (30, 0, 60, 30))  # only the central third is blue
    img.save(path)
    x = decode_image(str(path), size)
    assert x.shape == (3, size, size) and x.dtype == torch.float32 and x.is_contiguous()
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[:, size // 2, size // 2], torch.tensor([-1.0, -1.0, 1.0]))


def test_collate_with_every_image_skipped() -> None:
    batch = collate([Skipped("truncated", "a.jpg"), Skipped("unreadable", "b.png")], image_size=16)
    assert batch["images"].shape == (0, 3, 16, 16)
    assert batch["skipped"] == ["truncated", "unreadable"]
    assert batch["skipped_files"] == ["a.jpg", "b.png"]
