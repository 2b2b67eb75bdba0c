"""Effective batch at the start; its time, and the share taken by extras, at the end."""

import logging
import time
from typing import Protocol, runtime_checkable

from lightning.pytorch import Callback, LightningModule, Trainer

from difftune.callbacks.export import effective_batch

log = logging.getLogger(__name__)


@runtime_checkable
class TimedExtra(Protocol):
    """A callback doing optional work (grids, curves, metrics) that counts its wall time."""

    seconds: float


class RunSummary(Callback):
    """Logs `effective batch N (world size W)` (also as hyperparameters) and, after fit, how long
    it took and how much of that the sample grids, curves and metrics (`TimedExtra`) took."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        batch = effective_batch(trainer)
        if trainer.is_global_zero:  # one line for the run, not one a rank
            log.info("effective batch %d (world size %d)", batch, trainer.world_size)
        for logger in trainer.loggers:
            logger.log_hyperparams({"effective_batch": batch, "world_size": trainer.world_size})

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        extras = sum(c.seconds for c in trainer.callbacks if isinstance(c, TimedExtra))
        if not trainer.is_global_zero:  # the other ranks draw no grids: their share says 0 %
            return
        log.info(
            "fit took %.1f s, of which %.1f s (%.0f%%) in sample grids, curves and metrics",
            seconds, extras, 100 * extras / max(seconds, 1e-9),
        )  # fmt: skip
