"""Faults for the reliability tests, importable by a `train.py` subprocess (PYTHONPATH=tests)."""

import os
import signal

from lightning.pytorch import Callback


class KillAt(Callback):
    """SIGKILL this process when the batch that would make optimizer step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonOnRank(Callback):
    """NaN-fill the images of the batch at optimizer step `step` on DDP rank `rank` only."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch["images"].fill_(float("nan"))
