"""A NaN/inf loss drops its optimizer step on every rank, or stops the run, and says so."""

import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.optim import Optimizer

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

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads or torch.stack(torch._foreach_norm(grads)).isfinite().all():
            self.consecutive = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        self.consecutive += 1
        pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True)
        step = trainer.global_step
        if self.on_nonfinite == "stop":
            self.stop_reason = (
                f"non-finite loss at step {step} (callbacks.nonfinite.on_nonfinite=stop)"
            )
        elif self.consecutive >= self.max_consecutive:
            self.stop_reason = (
                f"{self.consecutive} consecutive non-finite losses up to step {step} "
                f"(callbacks.nonfinite.max_consecutive={self.max_consecutive}); lower the lr or "
                "check the data"
            )
        else:
            log.warning("non-finite loss at step %d: batch skipped (%d so far)", step, self.skipped)
        if self.stop_reason is not None:
            trainer.should_stop = True

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A stopped run ends here, in one line (the export skipped it: see `stop_reason`)."""
        if self.stop_reason is not None:
            checkpoints = Path(trainer.default_root_dir) / "checkpoints"
            raise DifftuneError(
                f"training stopped: {self.stop_reason}; no export. The last checkpoint is in "
                f"{checkpoints}"
            )
