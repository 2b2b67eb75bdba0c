"""DDIM samples of a fixed noise during training, shared by the sample-grid and KID callbacks."""

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler
from lightning.pytorch import LightningModule, Trainer

from difftune.core.sampling import sample


def sample_fixed_noise(
    trainer: Trainer,
    pl_module: LightningModule,
    unet: Any,
    num_images: int,
    seed: int,
    num_inference_steps: int,
    image_size: int | None = None,
    guidance: Any = None,
    callback: Callable[[dict], None] | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Samples (model space) of the `num_images` noises drawn from `seed`, the UNet in eval mode.

    The size is `image_size`, else the datamodule's training size, else the UNet's sample_size;
    `callback` sees the steps of the first batch only.
    """
    datamodule_size = getattr(trainer.datamodule, "image_size", None)
    size = image_size or datamodule_size or unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_images, unet.config.in_channels, size, size), generator=generator)
    scheduler = DDIMScheduler.from_config(pl_module.noise_scheduler.config)
    was_training = unet.training
    unet.eval()
    try:
        batches = noise.split(batch_size or num_images)
        return torch.cat([
            sample(unet, scheduler, batch.to(pl_module.device), num_inference_steps, guidance,
                   callback=callback if index == 0 else None)
            for index, batch in enumerate(batches)
        ])  # fmt: skip
    finally:
        unet.train(was_training)
