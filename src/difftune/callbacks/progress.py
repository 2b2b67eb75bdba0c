"""A plain progress line for log files, where a progress bar shows nothing until the end."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from difftune.errors import require_int

log = logging.getLogger(__name__)


def progress_line(
    step: int, total: float, loss: float | None, images_per_s: float, seconds_per_step: float
) -> str:
    """`step 40/300 loss 0.07123 31.5 img/s eta 0:02:10` (no total and no eta when unbounded)."""
    line = f"step {step}" + (f"/{int(total)}" if total != float("inf") else "")
    line += f" loss {loss:.4g}" if loss is not None else " loss -"
    line += f" {images_per_s:.1f} img/s"
    if total != float("inf"):
        eta = datetime.timedelta(seconds=round(max(0.0, total - step) * seconds_per_step))
        line += f" eta {eta}"
    return line


class ProgressLine(Callback):
    """When stdout is not a terminal, replaces the progress bar with a logged line every N steps.

    On a terminal it does nothing (Lightning's bar stays); with `trainer.enable_progress_bar=false`
    neither the bar nor the line shows. Images/s counts every process; the eta assumes the mean
    pace of the steps since this process started training.
    """

    def __init__(self, every_n_steps: int = 25) -> None:
        require_int("callbacks.progress.every_n_steps", every_n_steps, 1)
        self.every_n_steps = every_n_steps
        self.active = False
        self._total = float("inf")
        self._first_step = 0
        self._start = self._last_time = 0.0
        self._images = 0
        self._last_step = -1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback
        self.active = stage == "fit" and bar is not None and not sys.stdout.isatty()
        if self.active:
            bar.disable()  # a log file gets the bar's last frame only, with "Epoch 9/-2"

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._total = trainer.estimated_stepping_batches
        self._first_step = self._last_step = trainer.global_step
        self._start = self._last_time = time.perf_counter()
        self._images = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        self._images += len(batch["images"]) * trainer.world_size
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.report(trainer, step)

    @rank_zero_only
    def report(self, trainer: Trainer, step: int) -> None:
        """Log the line for `step` and start counting images for the next one."""
        now = time.perf_counter()
        loss = trainer.callback_metrics.get("train/loss")
        per_step = (now - self._start) / max(1, step - self._first_step)
        measured = trainer.callback_metrics.get("perf/images_per_s")  # training steps only
        images_per_s = (
            float(measured) if measured is not None
            else self._images / max(now - self._last_time, 1e-9)
        )  # fmt: skip
        line = progress_line(
            step, self._total, None if loss is None else float(loss), images_per_s, per_step
        )
        log.info("%s", line)
        self._images, self._last_time, self._last_step = 0, now, step
