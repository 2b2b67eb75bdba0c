"""Class labels (`data.label_column`): per source, ids and names, skips, resume, workers, errors."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difftune.data import ImageDataModule, datamodule, streaming
from difftune.data.synthetic import SyntheticStyleDataset, render
from difftune.errors import DifftuneError

#: one colour per class, so a batch shows which class each image came from
COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}
STYLES3 = ["photo", "vintage", "cyanotype"]


def colour_class(image: torch.Tensor) -> str:
    """The class whose colour `image` (3×H×W in [-1, 1]) is."""
    rgb = (image.mean(dim=(1, 2)) + 1) * 127.5
    return min(COLOURS, key=lambda c: (torch.tensor(COLOURS[c]) - rgb).square().sum().item())


def all_batches(dm: ImageDataModule) -> tuple[list[torch.Tensor], list[int], Counter]:
    """Images, labels and skip reasons of the train and validation loaders together."""
    images, labels, skipped = [], [], Counter()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            assert batch["labels"].dtype == torch.long
            assert len(batch["labels"]) == len(batch["images"])
            images.extend(batch["images"])
            labels.extend(batch["labels"].tolist())
            skipped.update(batch["skipped"])
    return images, labels, skipped


def write_classes(root: Path, counts: dict[str, int], nested: str = "") -> Path:
    """`counts[c]` single-colour PNGs of each class c under root/c/ (or root/c/<nested>/)."""
    for name, count in counts.items():
        folder = root / name / nested
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (12, 10), COLOURS[name]).save(folder / f"{name}_{i}.png")
    return root


def labelled_module(**kwargs) -> ImageDataModule:
    """A small labelled module; `kwargs` name the source."""
    defaults = {"val_size": 1, "image_size": 8, "batch_size": 3, "flip": False}
    return ImageDataModule(**(defaults | kwargs))


def test_imagefolder_labels_are_first_level_subfolders(tmp_path: Path) -> None:
    root = write_classes(tmp_path / "pets", {"cat": 2, "ant": 3})
    write_classes(root, {"bee": 2}, nested="deeper/still")  # nested deeper: still class "bee"
    (root / "empty").mkdir()  # no images: not a class
    (root / "cat" / "broken.png").write_bytes(b"not a png")  # skipped, and its label with it
    dm = labelled_module(source="imagefolder", data_dir=str(root), label_column="label")
    assert dm.class_names == ["ant", "bee", "cat"] and dm.train_dataset is None  # before setup
    images, labels, skipped = all_batches(dm)
    assert skipped == Counter({"unreadable": 1})
    assert [dm.class_names[i] for i in labels] == [colour_class(x) for x in images]
    assert Counter(labels) == Counter({0: 3, 1: 2, 2: 2})


@pytest.mark.parametrize("num_workers", [0, 1])
def test_labels_survive_workers_and_resume_exactly(tmp_path: Path, num_workers: int) -> None:
    root = write_classes(tmp_path / "pets", {"ant": 4, "bee": 4, "cat": 4})
    dm = labelled_module(
        source="imagefolder", data_dir=str(root), label_column="label", flip=True,
        num_workers=num_workers, persistent_workers=False,
    )  # fmt: skip
    whole = list(dm.train_dataloader())
    dm._batches_done = lambda: 2  # a run resumed after its second batch
    resumed = list(dm.train_dataloader())
    assert len(whole) == 4 and len(resumed) == 2  # 11 training images, 3 a batch
    for a, b in zip(whole[2:], resumed, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    for batch in whole:
        names = [dm.class_names[i] for i in batch["labels"]]
        assert names == [colour_class(x) for x in batch["images"]]


def test_synthetic_styles_layout_and_labels() -> None:
    data = SyntheticStyleDataset(9, 16, STYLES3, seed=2)
    for i in range(9):
        expected = render(i // 3, 2, 16, STYLES3[i % 3]).transpose(2, 0, 1) * 2 - 1
        assert np.allclose(data[i].numpy(), expected, atol=1e-6) and data.label(i) == i % 3
    dm = labelled_module(num_images=12, seed=2, style=STYLES3, label_column="style", val_size=3)
    assert dm.class_names == STYLES3 and dm.train_dataset is None
    val = next(iter(dm.val_dataloader()))
    assert val["labels"].tolist() == [i % 3 for i in dm.val_dataset.indices]
    train = torch.cat([b["labels"] for b in dm.train_dataloader()]).tolist()
    assert Counter(train + val["labels"].tolist()) == Counter({0: 4, 1: 4, 2: 4})


def test_synthetic_one_style_is_one_class_and_no_label_column_keeps_the_batch() -> None:
    dm = labelled_module(num_images=6, style="cyanotype", label_column="style")
    assert dm.class_names == ["cyanotype"]
    assert torch.cat([b["labels"] for b in dm.train_dataloader()]).tolist() == [0] * 5
    plain = labelled_module(num_images=6, style=STYLES3)
    assert plain.class_names is None
    assert set(next(iter(plain.train_dataloader()))) == {"images", "skipped", "skipped_files"}


def save_dataset(path: Path, names: list[str], label_feature, labels: list) -> Path:
    """A `save_to_disk` dataset: one image of colour COLOURS[names[i]] per row, plus a label."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    rows = {"image": [Image.new("RGB", (8, 8), COLOURS[n]) for n in names], "label": labels}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(path)
    return path


@pytest.mark.usefixtures("offline")
def test_hf_classlabel_keeps_its_names_and_ids(tmp_path: Path) -> None:
    import datasets

    names = ["cat", "ant", "cat", "bee", "ant", "cat"]
    order = ["cat", "bee", "ant"]  # the dataset's own order, not sorted
    path = save_dataset(
        tmp_path / "saved", names, datasets.ClassLabel(names=order), [order.index(n) for n in names]
    )
    dm = labelled_module(source="hf", dataset_name=str(path), label_column="label")
    assert dm.class_names == order and dm.train_dataset is None
    images, labels, _ = all_batches(dm)
    assert [order[i] for i in labels] == [colour_class(x) for x in images]
    assert sorted(labels) == sorted(order.index(n) for n in names)


@pytest.mark.usefixtures("offline")
def test_hf_string_and_integer_columns_map_sorted_values(tmp_path: Path) -> None:
    import datasets

    names = ["cat", "ant", "bee", "ant", "cat"]
    path = save_dataset(tmp_path / "str", names, datasets.Value("string"), names)
    dm = labelled_module(source="hf", dataset_name=str(path), label_column="label")
    images, labels, _ = all_batches(dm)
    assert dm.class_names == ["ant", "bee", "cat"]
    assert [dm.class_names[i] for i in labels] == [colour_class(x) for x in images]
    codes = {"ant": 30, "bee": 7, "cat": 100}
    path = save_dataset(tmp_path / "int", names, datasets.Value("int64"), [codes[n] for n in names])
    dm = labelled_module(source="hf", dataset_name=str(path), label_column="label")
    images, labels, _ = all_batches(dm)
    assert dm.class_names == ["7", "30", "100"]
    by_code = {str(code): name for name, code in codes.items()}
    assert [by_code[dm.class_names[i]] for i in labels] == [colour_class(x) for x in images]


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(
    ("feature", "labels", "message"),
    [
        ("float32", [0.5, 1.5, 0.5], r"holds Value\('float32'\): a label column is a ClassLabel"),
        ("classlabel", [0, -1, 1], r"1 rows have no class \(id -1\); valid ids are 0..1 \(a, b\)"),
    ],
)
def test_hf_unusable_label_columns(
    tmp_path: Path, feature: str, labels: list, message: str
) -> None:
    import datasets

    label_feature = (
        datasets.ClassLabel(names=["a", "b"])
        if feature == "classlabel"
        else (datasets.Value(feature))
    )
    path = save_dataset(tmp_path / "saved", ["ant"] * 3, label_feature, labels)
    dm = labelled_module(source="hf", dataset_name=str(path), label_column="label")
    with pytest.raises(DifftuneError, match=r"^data.label_column='label' of .*saved.* " + message):
        dm.setup()


@pytest.mark.usefixtures("offline")
def test_hf_hub_style_folder_and_a_corrupt_row_drops_its_label(tmp_path: Path) -> None:
    root = write_classes(tmp_path / "hub", {"ant": 3, "bee": 2})
    (root / "bee" / "broken.png").write_bytes(b"garbage")
    dm = labelled_module(source="hf", dataset_name=str(root), label_column="label")
    assert dm.class_names == ["ant", "bee"]
    images, labels, skipped = all_batches(dm)
    assert skipped == Counter({"unreadable": 1}) and Counter(labels) == Counter({0: 3, 1: 2})
    assert [dm.class_names[i] for i in labels] == [colour_class(x) for x in images]


@pytest.mark.usefixtures("offline")
def test_streamed_classlabel_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    load = datamodule.load_hf_records

    def counted(*args, **kwargs):  # each call lists the dataset's files (hub requests)
        opened.append(kwargs.get("streaming"))
        return load(*args, **kwargs)

    for module in (datamodule, streaming):  # wherever the data module may open it from
        monkeypatch.setattr(module, "load_hf_records", counted, raising=False)
    root = write_classes(tmp_path / "hub", {"ant": 4, "cat": 4})
    dm = labelled_module(
        source="hf", dataset_name=str(root), label_column="label", streaming=True, val_size=2,
        shuffle_buffer=8,
    )  # fmt: skip
    assert dm.class_names == ["ant", "cat"] and dm.train_dataset is None
    images, labels, _ = all_batches(dm)
    assert len(labels) == 8 and Counter(labels) == Counter({0: 4, 1: 4})
    assert [dm.class_names[i] for i in labels] == [colour_class(x) for x in images]
    assert opened == [True]  # the stream opened once, for the class names and the data


def write_metadata_folder(root: Path) -> Path:
    """A hub-style folder whose metadata.csv gives each image a string column `kind`."""
    root.mkdir()
    rows = ["file_name,kind"]
    for i, name in enumerate(["ant", "bee", "ant"]):
        Image.new("RGB", (8, 8), COLOURS[name]).save(root / f"{i}.png")
        rows.append(f"{i}.png,{name}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.usefixtures("offline")
def test_hf_errors_name_the_key_value_and_valid(tmp_path: Path) -> None:
    root = write_metadata_folder(tmp_path / "meta")
    dm = labelled_module(source="hf", dataset_name=str(root), label_column="kind", val_size=1)
    assert dm.class_names == ["ant", "bee"]  # a string column of a hub-style folder
    nope = labelled_module(source="hf", dataset_name=str(root), label_column="nope")
    expected = f"data.label_column='nope' is not one of image, kind (columns of {root})"
    with pytest.raises(DifftuneError) as err:
        _ = nope.class_names
    assert str(err.value) == expected
    streamed = labelled_module(
        source="hf", dataset_name=str(root), label_column="kind", streaming=True
    )
    wanted = r"^data.label_column='kind' of .* not a ClassLabel: streaming needs a ClassLabel "
    with pytest.raises(DifftuneError, match=wanted + r"column .*, or drop data.streaming$"):
        streamed.setup()


def test_imagefolder_errors_when_the_module_is_made(tmp_path: Path) -> None:
    """The layout is checked before any image is listed or decoded (the preflight's check)."""
    flat = tmp_path / "flat"
    (flat / "empty").mkdir(parents=True)  # a sub-folder without images is no class
    (flat / "empty" / "notes.txt").write_text("not an image")
    (flat / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(flat / ".cache" / "thumb.png")  # hidden: no class either
    (flat / "nested" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(flat / "nested" / "deeper" / "a.png")  # any depth: "nested"
    module = labelled_module(source="imagefolder", data_dir=str(flat), label_column="label")
    assert module.class_names == ["nested"]
    Image.new("RGB", (8, 8)).save(flat / "loose.png")
    wanted = r"^data.data_dir='.*flat' holds 1 images directly \(e.g. loose.png\): with data."
    with pytest.raises(DifftuneError, match=wanted + "label_column=label every image goes in"):
        labelled_module(source="imagefolder", data_dir=str(flat), label_column="label")
    mixed = write_classes(tmp_path / "mixed", {"ant": 2})
    for name in ("a_loose.png", "b_loose.jpg"):
        Image.new("RGB", (8, 8)).save(mixed / name)
    with pytest.raises(DifftuneError, match=r"holds 2 images directly \(e.g. a_loose.png\)"):
        labelled_module(source="imagefolder", data_dir=str(mixed), label_column="label")
    with pytest.raises(DifftuneError) as err:
        labelled_module(source="imagefolder", data_dir=str(mixed), label_column="style")
    assert str(err.value) == (
        "data.label_column='style' is not one of label "
        "(data.source=imagefolder labels each image by its label)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"label_column": "label"},
            "data.label_column='label' is not one of style "
            "(data.source=synthetic labels each image by its style)",
        ),
        (
            {"style": ["photo", "sepia"]},
            "data.style=['photo', 'sepia'] is not one of photo, vintage, cyanotype "
            "(or a list of them, each once)",
        ),
        (
            {"style": ["photo", "photo"]},
            "data.style=['photo', 'photo'] is not one of photo, vintage, cyanotype "
            "(or a list of them, each once)",
        ),
    ],
)
def test_synthetic_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DifftuneError) as err:
        ImageDataModule(**kwargs)
    assert str(err.value) == message


def test_style_list_from_the_command_line(tmp_path: Path) -> None:
    import hydra

    from helpers.compose import compose_train

    overrides = ["data.style=[photo,vintage,cyanotype]", "data.label_column=style"]
    cfg = compose_train(*overrides, "data.num_images=6", "data.val_size=0", output_dir=tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.class_names == STYLES3
    labels = torch.cat([b["labels"] for b in dm.train_dataloader()]).tolist()
    assert Counter(labels) == Counter({0: 2, 1: 2, 2: 2})
