"""EMA of the weights with warm-up, on Lightning's `WeightAveraging` callback."""

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import WeightAveraging

from difftune.core.options import check_ema_options


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
        check_ema_options(decay, warmup, inv_gamma, power, update_every_n_steps)
        super().__init__(device=device, use_buffers=True, multi_avg_fn=self._average)
        self.decay = decay
        self.warmup = warmup
        self.inv_gamma = inv_gamma
        self.power = power
        self.update_every_n_steps = update_every_n_steps
        self.current_decay = 0.0
        self._count: int | None = None  # updates so far, on the host (n_averaged is on the device)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0

    def _average(
        self,
        ema_params: list[torch.Tensor],
        params: list[torch.Tensor],
        num_averaged: int | torch.Tensor,
    ) -> None:
        """θ_ema ← d·θ_ema + (1 − d)·θ, with d from the warm-up (or fixed); `num_averaged` the
        updates before this one."""
        n = int(num_averaged)
        self.current_decay = (
            ema_decay(n, self.decay, self.inv_gamma, self.power) if self.warmup else self.decay
        )
        torch._foreach_lerp_(ema_params, params, 1.0 - self.current_decay)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._count = None  # read from n_averaged at the first update (a resumed run's count)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Lightning's update after each optimizer step, through `_update`."""
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step
        pl_module.log("ema/decay", self.current_decay, on_step=True, on_epoch=False)

    @torch.no_grad()
    def _update(self, pl_module: LightningModule) -> None:
        """`AveragedModel.update_parameters` (parameters and buffers) without its reads of
        `n_averaged`, a tensor on the module's device: on a GPU each read waits for the step, and
        the host cannot queue the next one meanwhile. The count is kept on the host as well."""
        average = self._average_model
        if self._count is None:
            self._count = int(average.n_averaged)  # once per fit
        ema = [*average.module.parameters(), *average.module.buffers()]
        raw = [*pl_module.parameters(), *pl_module.buffers()]
        raw = [t.to(e.device) for e, t in zip(ema, raw, strict=True)]
        if self._count == 0:
            torch._foreach_copy_(ema, raw)
        else:
            self._average(ema, raw, self._count)
        average.n_averaged += 1
        self._count += 1

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
