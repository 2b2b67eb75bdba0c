"""A tiny LightningModule, random batches and a bare Trainer, for fits without a config."""

import torch
from diffusers import DDPMScheduler
from lightning.pytorch import Trainer

from difftune.core.module import DiffusionFineTuner
from helpers.models import make_tiny_unet


def sgd(lr: float = 1.0):
    """An optimizer factory as the config's `_partial_` AdamW is one, but plain SGD."""
    return lambda params: torch.optim.SGD(params, lr=lr)


def make_module(prediction_type: str = "epsilon", lr: float = 1.0) -> DiffusionFineTuner:
    """The tiny UNet with a 1000-step DDPM scheduler and SGD."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    return DiffusionFineTuner(make_tiny_unet(), scheduler, optimizer=sgd(lr))


def batches(n: int, batch_size: int, seed: int = 0) -> list[dict]:
    """`n` batches of random 16 px images in [-1, 1], shaped as the DataModule's."""
    g = torch.Generator().manual_seed(seed)
    return [
        {"images": torch.rand(batch_size, 3, 16, 16, generator=g) * 2 - 1, "skipped": []}
        for _ in range(n)
    ]


def trainer(**kwargs) -> Trainer:
    """A CPU Trainer without logger, checkpoints, bar or summary; one step unless told."""
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=1,
    )
    return Trainer(**(defaults | kwargs))
