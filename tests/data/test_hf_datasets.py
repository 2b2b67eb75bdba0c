"""Hugging Face datasets offline: an unknown id is one line; saved and hub-style local datasets."""

from collections import Counter
from pathlib import Path

import pytest

from difftune.data import ImageDataModule
from difftune.errors import DifftuneError
from helpers.images import loader_images


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
    train, skipped_train = loader_images(dm.train_dataloader())
    val, skipped_val = loader_images(dm.val_dataloader())
    assert len(train) + len(val) == 5
    assert skipped_train + skipped_val == Counter({"unreadable": 1})
    with pytest.raises(DifftuneError, match="data.image_column='image' is not one of label, img"):
        ImageDataModule(source="hf", dataset_name=str(tmp_path / "saved")).setup()


@pytest.mark.usefixtures("offline")
def test_hf_local_hub_style_folder(image_folder: Path) -> None:
    dm = ImageDataModule(source="hf", dataset_name=str(image_folder), val_size=2, image_size=16)
    images, skipped = loader_images(dm.train_dataloader())
    assert len(images) == 10 and not skipped and dm.num_val == 2
