"""Shared fixtures: tiny models and images made in the test, so everything runs offline on CPU."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from hydra.core.hydra_config import HydraConfig
from PIL import Image

SCHEDULERS = {
    "ddim": lambda: DDIMScheduler(num_train_timesteps=1000, clip_sample=False),
    "ddpm": lambda: DDPMScheduler(num_train_timesteps=1000, clip_sample=False),
    "dpm": lambda: DPMSolverMultistepScheduler(num_train_timesteps=1000),
}


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
def _one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core box OpenMP barriers cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny_unet(sample_size: int = 16, seed: int = 0) -> UNet2DModel:
    """A ~100k-parameter UNet2DModel with two resolutions (input sizes must be multiples of 2)."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    return make_tiny_unet()


@pytest.fixture
def tiny_pipeline_dir(tmp_path: Path) -> Path:
    """A DDPMPipeline in save_pretrained layout (model_index.json, unet/, scheduler/)."""
    path = tmp_path / "tiny_pipeline"
    DDPMPipeline(
        unet=make_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)
    ).save_pretrained(path)
    return path


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
