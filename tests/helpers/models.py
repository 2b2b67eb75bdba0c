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


def make_conditional_unet(
    class_names: tuple[str, ...] = ("photo", "vintage", "cyanotype"), sample_size: int = 16,
    seed: int = 0,
) -> UNet2DModel:  # fmt: skip
    """`make_tiny_unet` with a class embedding (null label last) whose rows are random, so each
    label gives a different output (a freshly added embedding is zero: every label the same)."""
    return with_random_classes(make_tiny_unet(sample_size, seed), class_names, seed)


def with_random_classes(unet: UNet2DModel, class_names: tuple[str, ...], seed: int) -> UNet2DModel:
    """`unet` with an added class embedding of random N(0, 1) rows, in eval mode."""
    from difftune.core.conditioning import add_class_embedding

    unet = add_class_embedding(unet, class_names)
    with torch.no_grad():
        unet.class_embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
    return unet.eval()


def conditional_tiny_base(
    class_names: tuple[str, ...] = ("photo", "vintage", "cyanotype"), seed: int = 0
) -> tuple[UNet2DModel, dict]:
    """The embedded tiny base (a trained 32 px v-prediction UNet) with a random class embedding,
    and its noise schedule's config (clip_sample=True, as it ships): realistic magnitudes."""
    from difftune.hub.pipelines import load_noise_scheduler, load_unet

    unet = with_random_classes(load_unet("difftune/tiny_base"), class_names, seed)
    return unet, dict(load_noise_scheduler("difftune/tiny_base").config)
