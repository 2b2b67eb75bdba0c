"""A NaN/inf loss drops its optimizer step on every rank, or stops the run, and says so."""

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from difftune.core.module import fused_without_scaler
from difftune.errors import DifftuneError, is_int_at_least

log = logging.getLogger(__name__)

POLICIES = ("skip", "stop")


class NonFiniteGuard(Callback):
    """Drops an optimizer step whose gradients are not finite; stops per `on_nonfinite`.

    A NaN/inf loss gives NaN/inf gradients. Under DDP the gradients are all-reduced before this
    hook, so a batch that is NaN on one rank is non-finite on every rank and all ranks drop the
    same step, with no collective of their own. The gradients are set to None, so AdamW leaves
    weights and moments untouched. Under gradient accumulation the gradients of a window are one
    sum: a non-finite micro-batch drops the whole window's step (its finite micro-batches too).
    `skip` stops after `max_consecutive` dropped steps in a row, `stop` at the first; a stopped
    run keeps `last.ckpt`, exports nothing and ends with one error line.

    With a fused optimizer (`model.optimizer.fused=true`), no gradient scaler and one process,
    the check does not wait for the GPU: the flag goes to the fused step as its `found_inf`
    (the skip GradScaler uses: weights, moments and step count stay), and the host reads it when
    the GPU has got there, a step or two later; the warning, the count and a stop follow then
    (a skip in the last step or two is read at the end: warned and counted, not logged).
    """

    #: what it logs (run/objective.py checks an `objective=` against these before training)
    METRICS = ("train/nonfinite_skipped",)

    def __init__(self, on_nonfinite: str = "skip", max_consecutive: int = 10) -> None:
        if on_nonfinite not in POLICIES:
            raise ValueError(
                f"on_nonfinite={on_nonfinite}: expected skip (skip that batch's step) or stop"
            )
        if not is_int_at_least(max_consecutive, 1):
            raise ValueError(f"max_consecutive={max_consecutive!r} must be an integer >= 1")
        self.on_nonfinite = on_nonfinite
        self.max_consecutive = max_consecutive
        self.skipped = 0  # optimizer steps dropped in this run
        self.consecutive = 0
        self.stop_reason: str | None = None
        self._pending: list[tuple[int, torch.Tensor, Any]] = []  # (step, flag on the host, event)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        finite = torch.stack(torch._foreach_norm(grads)).isfinite().all()
        if not skips_on_device(trainer, optimizer):
            ok = bool(finite)  # waits for the GPU
            self._after_step(trainer, pl_module, step=trainer.global_step, finite=ok)
            if not ok:
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.grad = None
            return
        optimizer.found_inf = (~finite).float()  # read by the fused step: no wait for the GPU
        flag = optimizer.found_inf.to("cpu", non_blocking=True)
        event = None
        if optimizer.found_inf.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self._pending.append((trainer.global_step, flag, event))
        self._read(trainer, pl_module, wait=False)

    def _read(self, trainer: Trainer, pl_module: LightningModule | None, wait: bool) -> None:
        """Count the on-device flags the GPU has written (all of them with `wait`)."""
        while self._pending:
            step, flag, event = self._pending[0]
            if event is not None and not wait and not event.query():
                return
            if event is not None:
                event.synchronize()
            self._pending.pop(0)
            self._after_step(trainer, pl_module, step, finite=not flag.item())

    def _after_step(
        self, trainer: Trainer, pl_module: LightningModule | None, step: int, finite: bool
    ) -> None:
        if finite:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        if pl_module is not None:  # logging is refused in on_train_end
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True)
        if self.on_nonfinite == "stop":
            self.stop_reason = self.stop_reason or (
                f"non-finite loss at step {step} (callbacks.nonfinite.on_nonfinite=stop)"
            )
        elif self.consecutive >= self.max_consecutive:
            self.stop_reason = self.stop_reason or (
                f"{self.consecutive} consecutive non-finite losses up to step {step} "
                f"(callbacks.nonfinite.max_consecutive={self.max_consecutive}); lower the lr or "
                "check the data"
            )
        else:
            log.warning("non-finite loss at step %d: batch skipped (%d so far)", step, self.skipped)
        if self.stop_reason is not None:
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._read(trainer, None, wait=True)
        for optimizer in trainer.optimizers:
            if hasattr(optimizer, "found_inf"):
                del optimizer.found_inf

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A stopped run ends here, in one line (the export skipped it: see `stop_reason`)."""
        if self.stop_reason is not None:
            checkpoints = Path(trainer.default_root_dir) / "checkpoints"
            raise DifftuneError(
                f"training stopped: {self.stop_reason}; no export. The last checkpoint is in "
                f"{checkpoints}"
            )


def skips_on_device(trainer: Trainer, optimizer: Optimizer) -> bool:
    """A fused optimizer (it takes `found_inf`), no gradient scaler (whose `found_inf` it would
    be) and one process (ranks reading their flags at different steps could stop apart)."""
    return fused_without_scaler(trainer, optimizer) and trainer.world_size == 1
