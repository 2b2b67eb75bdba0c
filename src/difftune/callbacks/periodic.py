"""A callback that acts when training starts, every N optimizer steps, and when it ends."""

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class EveryNSteps(Callback):
    """Calls `act` at step 0, at every multiple of `every_n_steps` and at the last step, at most
    once per step (gradient accumulation repeats a step's batch end; the end may be a multiple)."""

    every_n_steps: int
    last_step: int = -1  # the step `act` last ran at; `act` sets it

    def act(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        raise NotImplementedError

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.act(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self.last_step:
            self.act(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self.last_step:
            self.act(trainer, pl_module)
