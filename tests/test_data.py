"""The data side: synthetic styles, robust decoding, the DataModule's batches, splits and errors."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difftune.data import ImageDataModule, SyntheticStyleDataset
from difftune.data.decode import Skipped, collate, decode_image, open_image
from difftune.errors import DifftuneError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def batches(loader) -> tuple[list[torch.Tensor], Counter]:
    """All image tensors of a loader and a count of the skipped reasons."""
    images, skipped = [], Counter()
    for batch in loader:
        assert set(batch) == {"images", "skipped", "skipped_files"}
        images.extend(batch["images"])
        skipped.update(batch["skipped"])
    return images, skipped


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


def pixel(path: Path, xy: tuple[int, int]) -> tuple[int, ...]:
    """The RGB value at `xy` of the image at `path` as decoded by difftune."""
    img = open_image(str(path))
    assert img.mode == "RGB"
    return img.getpixel(xy)


def close(a: tuple, b: tuple, tol: int = 8) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --- synthetic ------------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed() -> None:
    a = SyntheticStyleDataset(num_images=4, image_size=32, seed=3)
    b = SyntheticStyleDataset(num_images=4, image_size=32, seed=3)
    c = SyntheticStyleDataset(num_images=4, image_size=32, seed=4)
    for i in range(4):
        assert torch.equal(a[i], b[i])
        assert (a[i] - c[i]).abs().mean() > 0.05
    assert (a[0] - a[1]).abs().mean() > 0.05


@pytest.mark.parametrize("size", [8, 32, 64])
@pytest.mark.parametrize("style", ["photo", "vintage"])
def test_synthetic_shape_and_range(size: int, style: str) -> None:
    x = SyntheticStyleDataset(num_images=2, image_size=size, style=style)[1]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() - x.min() > 0.5


def test_styles_differ_but_share_the_scene() -> None:
    photo = torch.stack(list(SyntheticStyleDataset(8, 32, "photo", seed=1)))
    vintage = torch.stack(list(SyntheticStyleDataset(8, 32, "vintage", seed=1)))
    spread = lambda x: (x.amax(dim=1) - x.amin(dim=1)).mean().item()  # noqa: E731
    assert spread(vintage) < 0.4 * spread(photo)  # sepia: channels move together
    assert vintage[:, 0].mean() > vintage[:, 2].mean() + 0.2  # warm tone: red above blue
    assert vintage.std() < photo.std()  # faded contrast
    luma = lambda x: (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten()  # noqa: E731
    corr = torch.corrcoef(torch.stack([luma(photo), luma(vintage)]))[0, 1]
    assert corr > 0.7  # same underlying scene


# --- decoding -------------------------------------------------------------------------------


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


def test_decompression_bomb_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg_bytes(Image.new("RGB", (100, 100), RED))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(data, 16).reason == "decompression bomb"


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


# --- the DataModule -------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 1])
def test_imagefolder_batches_count_skipped(tmp_path: Path, num_workers: int) -> None:
    write_mixed_folder(tmp_path / "mixed")
    dm = ImageDataModule(
        source="imagefolder",
        data_dir=str(tmp_path / "mixed"),
        image_size=16,
        batch_size=4,
        val_size=0,
        flip=False,
        num_workers=num_workers,
    )
    dm.setup("fit")
    assert (dm.num_train, dm.num_val) == (10, 0)
    images, skipped = batches(dm.train_dataloader())
    assert len(images) == 7
    assert skipped == Counter({"truncated": 1, "empty file": 1, "unreadable": 1})
    for x in images:
        assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_val_loader_is_deterministic_and_centered(image_folder: Path) -> None:
    dm = ImageDataModule(
        source="imagefolder",
        data_dir=str(image_folder),
        val_size=4,
        image_size=24,
        batch_size=3,
        random_crop=True,
    )
    first, _ = batches(dm.val_dataloader())
    second, _ = batches(dm.val_dataloader())
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    files = sorted(str(p) for p in image_folder.iterdir())
    expected = [decode_image(files[i], 24) for i in dm.val_dataset.indices]  # centre, no flip
    assert all(torch.equal(a, b) for a, b in zip(first, expected, strict=True))


def test_all_corrupt_folder_fails_at_setup(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("not a png")
    dm = ImageDataModule(source="imagefolder", data_dir=str(tmp_path))
    with pytest.raises(DifftuneError, match=r"no decodable image in .* \(2 tried: .*empty file"):
        dm.setup("fit")


def test_folder_without_images_fails_at_setup(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DifftuneError, match="contains no image files"):
        ImageDataModule(source="imagefolder", data_dir=str(tmp_path)).setup()


def test_split_is_disjoint_and_deterministic() -> None:
    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = ImageDataModule(num_images=40, val_size=8, seed=seed)
        dm.setup("fit")
        return dm.train_dataset.indices, dm.val_dataset.indices

    train, val = split(0)
    assert len(train) == 32 and len(val) == 8 and not set(train) & set(val)
    assert set(train) | set(val) == set(range(40))
    assert split(0) == (train, val) and split(1) != (train, val)


def test_train_order_is_reproducible(image_folder: Path) -> None:
    def first_batch(seed: int) -> torch.Tensor:
        dm = ImageDataModule(
            source="imagefolder",
            data_dir=str(image_folder),
            val_size=2,
            image_size=16,
            batch_size=5,
            seed=seed,
        )
        torch.manual_seed(123)
        return next(iter(dm.train_dataloader()))["images"]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


def test_synthetic_batches() -> None:
    dm = ImageDataModule(num_images=20, val_size=4, image_size=16, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (8, 3, 16, 16) and batch["skipped"] == []
    assert (dm.num_train, dm.num_val, dm.image_size) == (16, 4, 16)


def test_val_size_is_clamped_and_max_images(image_folder: Path) -> None:
    dm = ImageDataModule(source="imagefolder", data_dir=str(image_folder), val_size=64)
    with pytest.warns(UserWarning, match="val_size=64 clamped to 11"):
        dm.setup()
    assert (dm.num_train, dm.num_val) == (1, 11)
    dm = ImageDataModule(source="imagefolder", data_dir=str(image_folder), max_images=5, val_size=2)
    assert (dm.num_train, dm.num_val) == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "foo"}, "data.source='foo' is not one of synthetic, hf, imagefolder"),
        ({"batch_size": 0}, "data.batch_size=0 must be >= 1"),
        ({"image_size": "32"}, "data.image_size='32' must be an integer"),
        ({"num_workers": -1}, "data.num_workers=-1 must be >= 0"),
        ({"val_size": -1}, "data.val_size=-1 must be >= 0"),
        ({"max_images": 0}, "data.max_images=0 must be >= 1"),
        ({"style": "sepia"}, "data.style='sepia' is not one of photo, vintage"),
        ({"source": "hf"}, "data.dataset_name=None: data.source=hf needs a dataset, e.g."),
        ({"source": "imagefolder"}, "data.data_dir=None: data=imagefolder needs the folder"),
        ({"source": "imagefolder", "data_dir": "/no/such/dir"}, "'/no/such/dir' is not an exist"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(DifftuneError, match=message.replace("(", r"\(")) as err:
        ImageDataModule(**kwargs)
    assert "\n" not in str(err.value)


# --- Hugging Face datasets (offline) --------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hub offline (env and the already-imported constants) and a throwaway datasets cache."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.mark.usefixtures("offline")
def test_hf_unknown_dataset_offline_is_one_line_error() -> None:
    dm = ImageDataModule(source="hf", dataset_name="nobody/no-such-dataset")
    with pytest.raises(DifftuneError) as err:
        dm.setup()
    message = str(err.value)
    assert "\n" not in message and "nobody/no-such-dataset" in message
    assert "data=imagefolder data.data_dir=" in message and "data=synthetic" in message


@pytest.mark.usefixtures("offline")
def test_hf_saved_to_disk_with_a_corrupt_row(image_folder: Path, tmp_path: Path) -> None:
    import datasets

    images = [p.read_bytes() for p in sorted(image_folder.iterdir())[:5]] + [b"garbage"]
    features = datasets.Features({"label": datasets.Value("int64"), "img": datasets.Image()})
    rows = {"label": list(range(6)), "img": [{"bytes": b, "path": None} for b in images]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "saved")
    dm = ImageDataModule(
        source="hf",
        dataset_name=str(tmp_path / "saved"),
        image_column="img",
        val_size=1,
        image_size=16,
        batch_size=4,
    )
    dm.setup("fit")
    train, skipped_train = batches(dm.train_dataloader())
    val, skipped_val = batches(dm.val_dataloader())
    assert len(train) + len(val) == 5
    assert skipped_train + skipped_val == Counter({"unreadable": 1})
    with pytest.raises(DifftuneError, match="data.image_column='image' is not one of label, img"):
        ImageDataModule(source="hf", dataset_name=str(tmp_path / "saved")).setup()


@pytest.mark.usefixtures("offline")
def test_hf_local_hub_style_folder(image_folder: Path) -> None:
    dm = ImageDataModule(source="hf", dataset_name=str(image_folder), val_size=2, image_size=16)
    images, skipped = batches(dm.train_dataloader())
    assert len(images) == 10 and not skipped and dm.num_val == 2
