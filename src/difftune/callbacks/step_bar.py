"""A terminal progress bar that counts optimizer steps toward `trainer.max_steps`.

Lightning's bars count the micro-batches of an epoch: with `max_epochs=-1` they show
`Epoch 9/-2`, with gradient accumulation `4/2`. difftune's runs are measured in steps.
"""

from __future__ import annotations

import math
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole fit: `train: 40/300 [00:12<01:20, 3.1it/s, train/loss=0.071]`,
    where it/s is optimizer steps per second. The loss is read at most every `LOSS_EVERY_S`
    seconds: on a GPU each read waits for the step."""

    LOSS_EVERY_S = 0.5
    _loss_read_at = -math.inf

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = bar.n = trainer.global_step  # a resumed run starts at its step
        bar.set_description("train")

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        """Epochs do not restart the bar."""

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if bar is None or bar.disable or step == bar.n:
            return  # a micro-batch inside an accumulation window: no new step
        if step % self.refresh_rate == 0 or step == bar.total:
            bar.n = step
            now = time.monotonic()
            if now - self._loss_read_at < self.LOSS_EVERY_S and step != bar.total:
                bar.refresh()
                return
            self._loss_read_at = now
            metrics = self.get_metrics(trainer, pl_module)
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None:
                metrics["train/loss"] = float(loss)
            bar.set_postfix(metrics)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The bar lives on across epochs; it closes at the end of training."""
