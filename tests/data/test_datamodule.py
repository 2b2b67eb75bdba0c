"""The DataModule: batches with skip counts, deterministic splits and order, argument errors."""

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from difftune.data import ImageDataModule
from difftune.data.decode import decode_image
from difftune.errors import DifftuneError
from helpers.images import BLUE, RED, left_right, loader_images, write_mixed_folder


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
    images, skipped = loader_images(dm.train_dataloader())
    assert len(images) == 7
    assert skipped == Counter({"truncated": 1, "empty file": 1, "unreadable": 1})
    for x in images:
        assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_val_loader_is_deterministic_and_centered(image_folder: Path) -> None:
    dm = ImageDataModule(
        source="imagefolder", data_dir=str(image_folder), val_size=4, image_size=24, batch_size=3,
        random_crop=True,
    )  # fmt: skip
    first, _ = loader_images(dm.val_dataloader())
    second, _ = loader_images(dm.val_dataloader())
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    files = sorted(str(p) for p in image_folder.iterdir())
    expected = [decode_image(files[i], 24) for i in dm.val_dataset.indices]  # centre, no flip
    assert all(torch.equal(a, b) for a, b in zip(first, expected, strict=True))


def test_all_corrupt_folder_fails_at_setup(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("not a png")
    dm = ImageDataModule(source="imagefolder", data_dir=str(tmp_path))
    said = r"^data.data_dir=.*: no decodable image \(1 training images tried: .*; 1 more held out"
    with pytest.raises(DifftuneError, match=said):
        dm.setup("fit")


def test_a_folder_whose_only_decodable_image_is_held_out_fails_at_setup(tmp_path: Path) -> None:
    """It used to train on empty batches to max_steps and exit 0."""
    Image.new("RGB", (40, 48), (200, 10, 10)).save(tmp_path / "f0.jpg")
    for i in range(1, 8):
        (tmp_path / f"f{i}.jpg").write_text("bad")
    dm = ImageDataModule(source="imagefolder", data_dir=str(tmp_path), image_size=16, seed=0)
    with pytest.raises(DifftuneError) as err:
        dm.setup("fit")
    assert str(err.value) == (
        f"data.data_dir={tmp_path}: no decodable image (4 training images tried: 4 unreadable; "
        "4 more held out for validation (data.val_size))"
    )


def test_a_held_out_split_with_nothing_decodable_is_said(tmp_path: Path) -> None:
    """Its val/loss used to be missing from metrics.csv without a word."""
    for i in range(8):
        path = tmp_path / f"f{i}.jpg"
        if i in (0, 3, 4, 7):  # the held-out indices of 8 images at seed 0
            path.write_text("bad")
        else:
            Image.new("RGB", (40, 48), (200, 10, 10)).save(path)
    dm = ImageDataModule(source="imagefolder", data_dir=str(tmp_path), image_size=16, seed=0)
    with pytest.warns(UserWarning) as caught:
        dm.setup("fit")
    assert dm.val_dataset.indices == [0, 3, 4, 7]
    assert [str(w.message) for w in caught if "held-out" in str(w.message)] == [
        "data.val_size=null: none of the 4 held-out images decodes, so val/loss is not "
        "measured; see skipped_images.txt"
    ]


def test_folder_without_images_fails_when_the_module_is_made(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_text("not listed")
    (tmp_path / "sub.png").mkdir()  # a folder named like an image
    with pytest.raises(DifftuneError, match="contains no image files"):
        ImageDataModule(source="imagefolder", data_dir=str(tmp_path))


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


def test_a_val_size_that_leaves_nothing_to_train_on_and_max_images(image_folder: Path) -> None:
    dm = ImageDataModule(source="imagefolder", data_dir=str(image_folder), val_size=12)
    said = (
        "data.val_size=12: the data has 12 images, so none would be left to train on; "
        "valid: 0 to 11 (data.val_size=null holds out 5%, 4 to 64)"
    )
    with pytest.raises(DifftuneError, match=re.escape(said)):
        dm.check_source()  # before the model loads
    dm = ImageDataModule(source="imagefolder", data_dir=str(image_folder), val_size=11)
    with pytest.warns(UserWarning, match="holds out 11 of the 12 images"):
        dm.setup()
    assert (dm.num_train, dm.num_val) == (1, 11)
    dm = ImageDataModule(source="imagefolder", data_dir=str(image_folder), max_images=5, val_size=2)
    assert (dm.num_train, dm.num_val) == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "foo"}, "data.source='foo' is not one of synthetic, hf, imagefolder"),
        ({"batch_size": 0}, "data.batch_size=0 must be an integer >= 1"),
        ({"num_workers": -1}, "data.num_workers=-1 must be an integer >= 0"),
        ({"val_size": -1}, "data.val_size=-1 must be an integer >= 0"),
        ({"max_images": 0}, "data.max_images=0 must be an integer >= 1"),
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


def test_training_flips_half_the_images_the_same_way_per_seed_and_epoch(tmp_path: Path) -> None:
    """Left half red, right half blue: a flipped image has blue on the left."""
    for i in range(33):
        left_right(RED, BLUE, size=(48, 48)).save(tmp_path / f"{i:02d}.png")

    def flips(epoch: int, seed: int = 0) -> list[bool]:
        dm = ImageDataModule(source="imagefolder", data_dir=str(tmp_path), image_size=16,
                             batch_size=8, val_size=1, seed=seed)  # fmt: skip
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        images, _ = loader_images(loader)
        return [bool(x[2, 8, 1] > x[0, 8, 1]) for x in images]  # blue at the left edge

    epoch_0 = flips(0)
    assert len(epoch_0) == 32 and 8 <= sum(epoch_0) <= 24  # p = 0.5 each
    assert flips(0) == epoch_0  # the same run again: the same flips
    assert flips(1) != epoch_0 and flips(0, seed=1) != epoch_0
