"""Tiny diffusers models made in the test: everything runs offline on the CPU."""

from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)

SCHEDULERS = {
    "ddim": lambda: DDIMScheduler(num_train_timesteps=1000, clip_sample=False),
    "ddpm": lambda: DDPMScheduler(num_train_timesteps=1000, clip_sample=False),
    "dpm": lambda: DPMSolverMultistepScheduler(num_train_timesteps=1000),
}


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


def save_tiny_pipeline(path: Path, unet: UNet2DModel | None = None) -> Path:
    """A DDPMPipeline in save_pretrained layout (model_index.json, unet/, scheduler/) at `path`."""
    unet = make_tiny_unet() if unet is None else unet
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(path)
    return path
