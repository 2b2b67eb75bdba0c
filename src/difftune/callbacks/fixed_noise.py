"""DDIM samples of a fixed noise during training, shared by the sample-grid and KID callbacks."""

import math
from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler
from lightning.pytorch import LightningModule, Trainer

from difftune.core.sampling import sample
from difftune.errors import DifftuneError


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
    class_labels: torch.Tensor | None = None,
    cfg_scale: float | None = None,
) -> torch.Tensor:
    """Samples (model space) of the `num_images` noises drawn from `seed`, the UNet in eval mode.

    The size is `image_size`, else the datamodule's training size, else the UNet's sample_size;
    `callback` sees the steps of the first batch only. `class_labels` (ids) and `cfg_scale` go to
    `sample`: one id per noise, or a multiple of `num_images` ids, the noises then repeating in
    that order (row r of a per-class grid: the same noises under the labels of row r).
    """
    datamodule_size = getattr(trainer.datamodule, "image_size", None)
    size = image_size or datamodule_size or unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_images, unet.config.in_channels, size, size), generator=generator)
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels, dtype=torch.long)
        if class_labels.ndim != 1 or class_labels.numel() % num_images:
            raise ValueError(
                f"sample_fixed_noise: {class_labels.numel()} class labels for {num_images} "
                "noises (expected a multiple)"
            )
        noise = noise.repeat(class_labels.numel() // num_images, 1, 1, 1)
    scheduler = DDIMScheduler.from_config(pl_module.noise_scheduler.config)
    was_training = unet.training
    unet.eval()
    try:
        batches = noise.split(batch_size or noise.shape[0])
        labels = (
            [None] * len(batches) if class_labels is None
            else class_labels.to(pl_module.device).split(batch_size or noise.shape[0])
        )  # fmt: skip
        return torch.cat([
            sample(unet, scheduler, batch.to(pl_module.device), num_inference_steps, guidance,
                   callback=callback if index == 0 else None,
                   class_labels=label, cfg_scale=cfg_scale)
            for index, (batch, label) in enumerate(zip(batches, labels, strict=True))
        ])  # fmt: skip
    finally:
        unet.train(was_training)


def check_cfg_scale(key: str, value: Any) -> float | None:
    """A callback's `cfg_scale` as a float, or None (no CFG); one line when it is not a number."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is not None and not (number and math.isfinite(value)):
        raise DifftuneError(f"{key}={value!r}: expected a finite number (3 is usual) or null")
    return None if value is None else float(value)
