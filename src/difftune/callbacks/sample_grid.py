"""Sample grids from a fixed noise every N optimizer steps, so grids compare across steps."""

from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from difftune.ema import ema_unet
from difftune.images import save_grid
from difftune.sampling import sample


class SampleGrid(Callback):
    """Writes `samples/step_000200.png`: DDIM samples of the current (or EMA) UNet, fixed noise."""

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 100,
        num_images: int = 16,
        num_inference_steps: int = 40,
        image_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.sample_grid.every_n_steps={every_n_steps} must be >= 1")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.num_inference_steps = num_inference_steps
        self.image_size = image_size
        self.seed = seed
        self.written: list[Path] = []
        self._last_step = -1

    @rank_zero_only
    def write(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        """Sample the fixed noise with the current weights and save the grid for this step."""
        unet = ema_unet(trainer) or pl_module.unet
        datamodule_size = getattr(trainer.datamodule, "image_size", None)
        size = self.image_size or datamodule_size or unet.config.sample_size
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(
            self.num_images, unet.config.in_channels, size, size, generator=generator
        )
        scheduler = DDIMScheduler.from_config(pl_module.noise_scheduler.config)
        was_training = unet.training
        unet.eval()
        x_0 = sample(unet, scheduler, noise.to(pl_module.device), self.num_inference_steps)
        unet.train(was_training)
        path = save_grid(x_0, self.dirpath / f"step_{trainer.global_step:06d}.png")
        self.written.append(path)
        self._last_step = trainer.global_step
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image("samples", [str(path)], step=trainer.global_step)
        return path

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.write(trainer, pl_module)
