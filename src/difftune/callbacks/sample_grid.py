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

from difftune.callbacks.fixed_noise import check_cfg_scale, sample_fixed_noise
from difftune.callbacks.grid_budget import CFG_COST, plan_grids
from difftune.callbacks.periodic import EveryNSteps
from difftune.core.ema import ema_unet
from difftune.errors import is_int_at_least, require_int
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
    A class-conditional module (`pl_module.class_names`) gets one row per class (the same noises
    in every row) and, per model, a "no CFG" panel and one with classifier-free guidance at
    `cfg_scale` (None: none), the guided panel under CFG too.
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
        cfg_scale: float | None = 3.0,
    ) -> None:
        require_int("callbacks.sample_grid.every_n_steps", every_n_steps, 1)
        require_int("callbacks.sample_grid.num_inference_steps", num_inference_steps, 1)
        if not is_int_at_least(num_images, 1):
            raise ValueError(f"callbacks.sample_grid.num_images={num_images!r} must be >= 1")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.num_inference_steps = num_inference_steps
        self.image_size = image_size
        self.seed = seed
        self.guidance = guidance
        self.progression_path = Path(progression_path) if progression_path else None
        self.max_cost_ratio = max_cost_ratio
        self.cfg_scale = check_cfg_scale(f"{KEY}.cfg_scale", cfg_scale)
        self.written: list[Path] = []
        self.seconds = 0.0  # wall time spent here, reported against the whole fit

    def _sample(
        self, trainer: Trainer, pl_module: LightningModule, unet: Any, guidance: Any,
        callback: Any = None, num_images: int | None = None,
        class_labels: torch.Tensor | None = None, cfg_scale: float | None = None,
    ) -> torch.Tensor:  # fmt: skip
        return sample_fixed_noise(
            trainer, pl_module, unet, num_images or self.num_images, self.seed,
            self.num_inference_steps, self.image_size, guidance, callback,
            class_labels=class_labels, cfg_scale=cfg_scale,
        )  # fmt: skip

    def _rows(self, class_names: list[str]) -> torch.Tensor:
        """The label of each image of a per-class grid: row c is class c, ⌊num_images / n⌋ wide."""
        columns = max(1, self.num_images // len(class_names))
        return torch.arange(len(class_names)).repeat_interleave(columns)

    def _kinds(self, conditional: bool) -> list[tuple[str, Guidance | None, float | None]]:
        """(label, guidance, cfg_scale) of the panels of one model."""
        if not conditional:
            kinds = [("unguided", None, None)]
        else:
            kinds = [("no CFG", None, None)]
            if self.cfg_scale is not None:
                kinds.append((f"CFG {self.cfg_scale:g}", None, self.cfg_scale))
        if self.guidance is not None:
            prefix = f"{kinds[-1][0]}, " if conditional else ""
            kinds.append((prefix + self.guidance.label, self.guidance, kinds[-1][2]))
        return kinds

    def _work(self, trainer: Trainer, conditional: bool) -> int:
        """UNet work per image and step of one grid: its panels, a CFG panel counted twice."""
        per_model = sum(1 if cfg is None else CFG_COST for _, _, cfg in self._kinds(conditional))
        return (2 if ema_unet(trainer) else 1) * per_model

    def fit_to_budget(self, trainer: Trainer) -> None:
        """Fewer images/steps when the grids left would outweigh the training left; warn once."""
        class_names = getattr(trainer.lightning_module, "class_names", None)
        images = self.num_images if class_names is None else len(self._rows(class_names))
        steps_left = trainer.estimated_stepping_batches - trainer.global_step
        batch = getattr(trainer.datamodule, "batch_size", None) or 1
        plan = plan_grids(
            images, self.num_inference_steps,
            num_grids=2 + int(min(steps_left, 1e9) // self.every_n_steps),
            panels=self._work(trainer, class_names is not None),
            train_images=steps_left * batch * trainer.accumulate_grad_batches,
            max_ratio=self.max_cost_ratio,
        )  # fmt: skip
        if not plan.reduced(images, self.num_inference_steps):
            return
        asked, self.num_images = self.num_inference_steps, plan.num_images
        self.num_inference_steps = plan.num_inference_steps
        used = self.num_images if class_names is None else len(self._rows(class_names))
        log.warning(
            "sample grids of %d images × %d steps would take %.1fx the UNet work of the %d "
            "training steps left: using %d images × %d steps (set %s.num_images, "
            "%s.num_inference_steps, %s.every_n_steps, or %s.max_cost_ratio=null to keep them)",
            images, asked, plan.ratio, steps_left, used,
            plan.num_inference_steps, KEY, KEY, KEY, KEY,
        )  # fmt: skip

    @rank_zero_only
    def write(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        """Sample the fixed noise with the current weights and save the panels for this step."""
        start = time.perf_counter()
        averaged, raw = ema_unet(trainer), pl_module.unet
        class_names = getattr(pl_module, "class_names", None)
        labels = None if class_names is None else self._rows(class_names)
        columns = None if labels is None else len(labels) // len(class_names)
        size = self.image_size or getattr(trainer.datamodule, "image_size", None)
        kinds = self._kinds(class_names is not None)
        count = len(kinds) * (2 if averaged else 1)
        what = (
            f"{self.num_images if labels is None else len(labels)} images × "
            f"{self.num_inference_steps} steps at {size or raw.config.sample_size} px"
            + (f", {count} panels" if count > 1 else "")
        )
        log.info("step %d: sampling a grid of %s", trainer.global_step, what)
        panels = []
        for name, unet in [("EMA", averaged), ("raw", raw)] if averaged else [("", raw)]:
            for label, guidance, cfg_scale in kinds:
                x_0 = self._sample(trainer, pl_module, unet, guidance, num_images=columns,
                                   class_labels=labels, cfg_scale=cfg_scale)  # fmt: skip
                panels.append((f"{name} {label}".strip(), x_0))
        path = self.dirpath / f"step_{trainer.global_step:06d}.png"
        title = f"step {trainer.global_step}"
        if class_names is not None:
            title += f", a row per class: {', '.join(class_names)}"
        save_panels(panels, path, title=title, nrow=columns)
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
        """x_t beside x̂0 for the first four images, at five points of the sampling loop (of the
        first class, with CFG at `cfg_scale`, for a class-conditional module)."""
        start = time.perf_counter()
        steps: list[dict] = []
        unet = ema_unet(trainer) or pl_module.unet
        conditional = getattr(pl_module, "class_names", None) is not None
        self._sample(
            trainer, pl_module, unet, self.guidance, steps.append, num_images=4,
            class_labels=torch.zeros(4, dtype=torch.long) if conditional else None,
            cfg_scale=self.cfg_scale if conditional else None,
        )  # fmt: skip
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
