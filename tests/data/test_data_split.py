"""Held-out split of small real folders, and the `datasets` keys of hub datasets."""

import csv
import logging
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image
from safetensors.torch import load_file

from difftune.data import ImageDataModule
from difftune.errors import DifftuneError
from helpers.compose import compose_train, shrink
from helpers.runs import unet_weights


def write_folder(path: Path, n: int) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


@pytest.mark.parametrize(
    ("n", "held_out"), [(2, 1), (12, 4), (64, 4), (200, 10), (1000, 50), (5000, 64)]
)
def test_default_val_split_is_proportional_with_floor_and_cap(n, held_out) -> None:
    dm = ImageDataModule(num_images=n, image_size=8)  # val_size=None: 5%, at least 4, at most 64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    assert (dm.num_train, dm.num_val) == (n - held_out, held_out)
    assert not [w for w in caught if "holds out" in str(w.message)]


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (5, r"data.val_size=null holds out 4 of the 5 images \(80%\) from training; "
            r"data.val_size=N holds out N"),
        (3, r"data.val_size=null: only 3 images, so 2 held out for validation instead of 4"),
        (1, r"data.val_size=null: only 1 image, so 0 held out for validation instead of 4"),
    ],
)  # fmt: skip
def test_a_tiny_folder_is_told_what_the_default_split_takes(n, message) -> None:
    dm = ImageDataModule(num_images=n, image_size=8)
    with pytest.warns(UserWarning, match=f"^{message}"):
        dm.setup()
    assert dm.num_train == 1 and dm.num_val == n - 1


def test_a_64_image_folder_keeps_most_for_training(tmp_path, caplog) -> None:
    """The old default (val_size=32) silently held out half of a 64-image folder."""
    folder = write_folder(tmp_path / "photos", 64)
    dm = ImageDataModule(source="imagefolder", data_dir=str(folder), image_size=16)
    with caplog.at_level(logging.INFO, logger="difftune.data.datamodule"):
        dm.setup()
    assert (dm.num_train, dm.num_val) == (60, 4)
    assert "64 images, 60 train / 4 validation" in caplog.text


def test_an_explicit_large_val_size_is_said(tmp_path) -> None:
    folder = write_folder(tmp_path / "photos", 64)
    dm = ImageDataModule(source="imagefolder", data_dir=str(folder), image_size=16, val_size=32)
    said = r"^data.val_size=32 holds out 32 of the 64 images \(50%\) from training"
    with pytest.warns(UserWarning, match=said):
        dm.setup()
    assert (dm.num_train, dm.num_val) == (32, 32)


def test_hub_dataset_subset_and_revision_reach_load_dataset(monkeypatch, tmp_path) -> None:
    calls = []
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(6)]

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = ImageDataModule(
        source="hf", dataset_name="user/faces", subset="256px", revision="v1.0", image_size=8
    )
    dm.setup()
    assert calls == [
        ("user/faces", "256px", {"split": "train", "revision": "v1.0", "streaming": False})
    ]
    assert dm.num_train + dm.num_val == 6


def test_hub_dataset_failure_names_the_keys(monkeypatch) -> None:
    def failing(*args, **kwargs):
        raise ValueError("BuilderConfig 'nope' not found. Available: ['default']")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    dm = ImageDataModule(source="hf", dataset_name="user/faces", subset="nope", image_size=8)
    with pytest.raises(DifftuneError, match=r"data.subset='nope'.*BuilderConfig 'nope' not found"):
        dm.setup()


def test_a_streamed_dataset_holds_out_its_first_images_and_reshuffles_each_epoch(tmp_path):
    """data.streaming=true reads a (here: local) dataset as a stream: nothing loaded up front."""
    folder = write_folder(tmp_path / "photos", 20)
    dm = ImageDataModule(
        source="hf", dataset_name=str(folder), streaming=True, val_size=4, image_size=8,
        batch_size=4, shuffle_buffer=32, flip=False,
    )  # fmt: skip
    dm.setup()
    assert len(dm.val_dataset) == 4
    val = [tuple(x.flatten()[:3].tolist()) for x in dm.val_dataset]
    loader = dm.train_dataloader()
    epochs = [[tuple(x.flatten()[:3].tolist()) for b in loader for x in b["images"]]
              for _ in range(2)]  # fmt: skip
    assert len(epochs[0]) == len(epochs[1]) == 16  # every other image, once per epoch
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]  # reshuffled
    assert not set(val) & set(epochs[0])  # the held-out images are never trained on
    again = ImageDataModule(
        source="hf", dataset_name=str(folder), streaming=True, val_size=4, image_size=8,
        batch_size=4, shuffle_buffer=32, flip=False,
    )  # fmt: skip
    again.setup()
    first = [tuple(x.flatten()[:3].tolist()) for b in again.train_dataloader() for x in b["images"]]
    assert first == epochs[0]  # the same seed: the same stream order


def test_streaming_is_for_hub_datasets(tmp_path):
    with pytest.raises(DifftuneError, match=r"data.streaming=true with data.source='imagefolder'"):
        ImageDataModule(source="imagefolder", data_dir=str(tmp_path), streaming=True)


@pytest.mark.slow
def test_train_py_fine_tunes_from_a_stream(tmp_path, tiny_pipeline_dir):
    from difftune.run.train import train

    folder = write_folder(tmp_path / "photos", 24)
    cfg = compose_train(
        f"model.pretrained={tiny_pipeline_dir}", "data=hf", f"data.dataset_name={folder}",
        "data.streaming=true", "data.val_size=4", "data.image_size=16", "data.num_workers=0",
        output_dir=tmp_path / "run",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
    metrics = train(shrink(cfg, steps=3))
    assert 0 < metrics["train/loss"] < 2 and "val/loss" in metrics
    with open(tmp_path / "run" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert steps == [0, 1, 2]  # three optimizer steps drew three streamed batches
    tuned = unet_weights(tmp_path / "run")
    base = load_file(tiny_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(tuned[k], base[k]) for k in base)  # and moved the weights
