"""EMA of the weights with warm-up, on Lightning's `WeightAveraging` callback."""

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging

from difftune.errors import is_number


def ema_decay(step: int, max_decay: float, inv_gamma: float = 1.0, power: float = 2 / 3) -> float:
    """Warm-up decay 1 − (1 + step/γ)^−p, capped at `max_decay` (as diffusers' EMAModel)."""
    if step <= 0:
        return 0.0
    return min(max_decay, 1.0 - (1.0 + step / inv_gamma) ** -power)


class EMA(WeightAveraging):
    """Averages the module after every optimizer step; validation and the export use the average.

    Lightning swaps the averaged weights in for validation and stores them as the checkpoint's
    `state_dict` (the raw weights under `current_model_state`). Unlike Lightning's default, the
    module keeps its raw weights after fit, so a checkpoint written at the end still resumes
    correctly; `ema_unet(trainer)` gives the averaged UNet, which the export uses.
    """

    #: what it logs (run/objective.py checks an `objective=` against these before training)
    METRICS = ("ema/decay",)

    def __init__(
        self,
        decay: float = 0.9999,
        warmup: bool = True,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        update_every_n_steps: int = 1,
        device: str | None = None,
    ) -> None:
        if not (is_number(decay) and 0.0 < decay < 1.0):
            raise ValueError(f"ema.decay={decay} must be in (0, 1)")
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._average)
        self.decay = decay
        self.warmup = warmup
        self.inv_gamma = inv_gamma
        self.power = power
        self.update_every_n_steps = update_every_n_steps
        self.current_decay = 0.0

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0

    def _average(
        self, ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor
    ) -> None:
        """θ_ema ← d·θ_ema + (1 − d)·θ, with d from the warm-up (or fixed)."""
        n = int(num_averaged)
        self.current_decay = (
            ema_decay(n, self.decay, self.inv_gamma, self.power) if self.warmup else self.decay
        )
        torch._foreach_lerp_(ema_params, params, 1.0 - self.current_decay)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        pl_module.log("ema/decay", self.current_decay, on_step=True, on_epoch=False)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Leave the raw weights in place (Lightning would copy the average over them)."""

    def averaged_module(self) -> LightningModule | None:
        """The averaged copy of the module (None before fit starts)."""
        return None if self._average_model is None else self._average_model.module


def ema_unet(trainer: Trainer) -> Any | None:
    """The EMA UNet of a trainer's `EMA` callback, or None when EMA is off."""
    for callback in trainer.callbacks:
        if isinstance(callback, EMA) and callback.averaged_module() is not None:
            return callback.averaged_module().unet
    return None
