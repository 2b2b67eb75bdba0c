"""Shared fixtures: the real configs shrunk to tiny runs, tiny models and images made in the test,
so everything runs offline on CPU. Helpers the fixtures do not cover live in tests/helpers/."""

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image

from helpers.compose import compose_sample, compose_train, shrink, shrink_sample
from helpers.models import make_tiny_unet, save_tiny_pipeline


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `runs_first` (minutes each) first: a parallel run (`-n 2 --dist worksteal`)
    starts them at once instead of ending on one of them while the other workers idle."""
    items.sort(key=lambda item: item.get_closest_marker("runs_first") is None)


@pytest.fixture
def cfg_train(tmp_path: Path) -> DictConfig:
    """`python train.py` as composed from conf/train.yaml, shrunk to a 4-step CPU run in tmp_path.

    `shrink(cfg_train, steps=n)` makes it n steps; `compose_train` takes overrides.
    """
    return shrink(compose_train(output_dir=tmp_path))


@pytest.fixture
def cfg_sample(tmp_path: Path) -> DictConfig:
    """`python sample.py` as composed from conf/sample.yaml: 2 images, 3 steps, in tmp_path."""
    return shrink_sample(compose_sample(output_dir=tmp_path))


@pytest.fixture
def noise() -> torch.Tensor:
    """A fixed start noise for the tiny UNet (2 images, 16 px)."""
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _no_hydra_job_left_behind():
    """A test that sets Hydra's job config (as a job sees it) must not make the next one a job."""
    yield
    HydraConfig.instance().cfg = None


@pytest.fixture(autouse=True)
def _ctrl_c_as_a_fresh_process_has_it():
    """Lightning ignores SIGINT once a fit is interrupted (so a second Ctrl-C cannot cut its
    shutdown short); a test whose fit ended that way must not leave the next test deaf to it."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core box OpenMP barriers cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    return make_tiny_unet()


@pytest.fixture
def tiny_pipeline_dir(tmp_path: Path) -> Path:
    """A DDPMPipeline in save_pretrained layout (model_index.json, unet/, scheduler/)."""
    return save_tiny_pipeline(tmp_path / "tiny_pipeline")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Twelve small RGB JPEG/PNG images of random colours."""
    path = tmp_path / "images"
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path / f"img_{i:02d}.{'jpg' if i % 2 else 'png'}")
    return path


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
