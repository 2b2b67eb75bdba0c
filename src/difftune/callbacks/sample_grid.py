"""Sample grids from a fixed noise every N optimizer steps, so grids compare across steps."""

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from difftune.callbacks.fixed_noise import sample_fixed_noise
from difftune.callbacks.grid_budget import plan_grids
from difftune.callbacks.periodic import EveryNSteps
from difftune.core.ema import ema_unet
from difftune.guidance import Guidance
from difftune.pictures.images import save_panels
from difftune.pictures.plots import plot_progression

log = logging.getLogger(__name__)
KEY = "callbacks.sample_grid"


class SampleGrid(EveryNSteps):
    """Writes `samples/step_000200.png` from a fixed noise, and `progression.png` at the end.

    One panel per model and guidance: the EMA weights when EMA is on (the raw weights beside
    them), each unguided and, when `guidance` is given, guided from the same noise. When the grids
    would take more than `max_cost_ratio` times the UNet work of the training (a short run), they
    get fewer steps and images, with one warning (`grid_budget`); None keeps them as configured.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 100,
        num_images: int = 16,
        num_inference_steps: int = 40,
        image_size: int | None = None,
        seed: int = 0,
        guidance: Guidance | None = None,
        progression_path: str | None = None,
        max_cost_ratio: float | None = 0.5,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.sample_grid.every_n_steps={every_n_steps} must be >= 1")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.num_inference_steps = num_inference_steps
        self.image_size = image_size
        self.seed = seed
        self.guidance = guidance
        self.progression_path = Path(progression_path) if progression_path else None
        self.max_cost_ratio = max_cost_ratio
        self.written: list[Path] = []
        self.seconds = 0.0  # wall time spent here, reported against the whole fit

    def _sample(
        self, trainer: Trainer, pl_module: LightningModule, unet: Any, guidance: Any,
        callback: Any = None, num_images: int | None = None,
    ) -> torch.Tensor:  # fmt: skip
        return sample_fixed_noise(
            trainer, pl_module, unet, num_images or self.num_images, self.seed,
            self.num_inference_steps, self.image_size, guidance, callback,
        )  # fmt: skip

    def _panels(self, trainer: Trainer) -> int:
        return (2 if ema_unet(trainer) else 1) * (2 if self.guidance is not None else 1)

    def fit_to_budget(self, trainer: Trainer) -> None:
        """Fewer images/steps when the grids left would outweigh the training left; warn once."""
        steps_left = trainer.estimated_stepping_batches - trainer.global_step
        batch = getattr(trainer.datamodule, "batch_size", None) or 1
        plan = plan_grids(
            self.num_images, self.num_inference_steps,
            num_grids=2 + int(min(steps_left, 1e9) // self.every_n_steps),
            panels=self._panels(trainer),
            train_images=steps_left * batch * trainer.accumulate_grad_batches,
            max_ratio=self.max_cost_ratio,
        )  # fmt: skip
        if not plan.reduced(self.num_images, self.num_inference_steps):
            return
        log.warning(
            "sample grids of %d images × %d steps would take %.1fx the UNet work of the %d "
            "training steps left: using %d images × %d steps (set %s.num_images, "
            "%s.num_inference_steps, %s.every_n_steps, or %s.max_cost_ratio=null to keep them)",
            self.num_images, self.num_inference_steps, plan.ratio, steps_left, plan.num_images,
            plan.num_inference_steps, KEY, KEY, KEY, KEY,
        )  # fmt: skip
        self.num_images, self.num_inference_steps = plan.num_images, plan.num_inference_steps

    @rank_zero_only
    def write(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        """Sample the fixed noise with the current weights and save the panels for this step."""
        start = time.perf_counter()
        averaged, raw = ema_unet(trainer), pl_module.unet
        size = self.image_size or getattr(trainer.datamodule, "image_size", None)
        count = self._panels(trainer)
        what = (
            f"{self.num_images} images × {self.num_inference_steps} steps at "
            f"{size or raw.config.sample_size} px" + (f", {count} panels" if count > 1 else "")
        )
        log.info("step %d: sampling a grid of %s", trainer.global_step, what)
        panels = []
        for name, unet in [("EMA", averaged), ("raw", raw)] if averaged else [("", raw)]:
            panels.append(
                (f"{name} unguided".strip(), self._sample(trainer, pl_module, unet, None))
            )
            if self.guidance is not None:
                x_0 = self._sample(trainer, pl_module, unet, self.guidance)
                panels.append((f"{name} {self.guidance.label}".strip(), x_0))
        path = self.dirpath / f"step_{trainer.global_step:06d}.png"
        save_panels(panels, path, title=f"step {trainer.global_step}")
        self.written.append(path)
        self.last_step = trainer.global_step
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # W&B
                logger.log_image("samples", [str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                pixels = np.asarray(Image.open(path).convert("RGB"))
                logger.experiment.add_image(
                    "samples", pixels, trainer.global_step, dataformats="HWC"
                )
        seconds = time.perf_counter() - start
        self.seconds += seconds
        log.info("step %d: grid written (%s) to %s in %.1f s", trainer.global_step, what, path,
                 seconds)  # fmt: skip
        return path

    @rank_zero_only
    def write_progression(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """x_t beside x̂0 for the first four images, at five points of the sampling loop."""
        start = time.perf_counter()
        steps: list[dict] = []
        unet = ema_unet(trainer) or pl_module.unet
        self._sample(trainer, pl_module, unet, self.guidance, steps.append, num_images=4)
        every = max(1, self.num_inference_steps // 4)
        kept = [s for s in steps if s["i"] % every == 0 or s["i"] == len(steps) - 1]
        plot_progression(kept, self.progression_path)
        self.seconds += time.perf_counter() - start

    def act(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        return self.write(trainer, pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.fit_to_budget(trainer)
        super().on_train_start(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.progression_path:
            self.write_progression(trainer, pl_module)
