"""`loss_curve.png`: raw and smoothed training loss per step, validation loss as points."""

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from difftune.errors import require_int
from difftune.pictures.plots import pyplot


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing slider)."""
    out, avg = [], 0.0
    for i, value in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight**i))
    return out


class LossCurve(Callback):
    """Collects `train/loss` and `val/loss` and redraws the picture every N steps and at the end.

    One training point per optimizer step: with gradient accumulation, the mean of its
    micro-batches' losses (not one point per micro-batch at the same step, a staircase). Metrics
    of other callbacks that offer `curve() -> (name, [(step, value)])` (KID) get a panel beside.
    The losses stay tensors until a drawing: one GPU sync per drawing, not one per step.
    """

    def __init__(self, path: str, every_n_steps: int = 100, smoothing: float = 0.9) -> None:
        require_int("callbacks.loss_curve.every_n_steps", every_n_steps, 1)
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.smoothing = smoothing
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self._drawn_at = 0
        self._window: list[torch.Tensor] = []  # micro-batch losses of this step (accumulation)
        self._unread: list[tuple[int, torch.Tensor]] = []  # steps' losses not yet in `train`
        self._window_step = 0
        self._trainer: Trainer | None = None
        self.seconds = 0.0  # wall time spent drawing, reported against the whole fit

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and outputs is not None:
            self._window.append(loss.detach())
        step = trainer.global_step
        if step != self._window_step and self._window:  # an optimizer step ended the window
            self._unread.append((step, torch.stack(self._window).float().mean()))
            self._window = []
        self._window_step = step
        if self._unread and step % self.every_n_steps == 0 and step != self._drawn_at:
            self._drawn_at = step
            self.read()
            self.draw()

    def read(self) -> None:
        """Move the steps' losses from the device into `train` (every rank: nothing piles up)."""
        if self._unread:
            values = torch.stack([value for _, value in self._unread]).tolist()
            self.train += [(step, v) for (step, _), v in zip(self._unread, values, strict=True)]
            self._unread = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._window_step = trainer.global_step  # a resumed run starts at its checkpoint's step
        self._trainer = trainer
        if trainer.global_step > 0 and not self.train:  # resumed: the curve so far, from the log
            for logger in trainer.loggers:
                if hasattr(logger, "history"):
                    earlier = logger.history(trainer.global_step, ("train/loss", "val/loss"))
                    # a train row's step is the one before its optimizer step; here, after it
                    self.train = [(step + 1, loss) for step, loss in earlier["train/loss"]]
                    self.val = earlier["val/loss"]

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking:
            self.val.append((trainer.global_step, float(loss)))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw()  # after every callback's on_train_end: the last KID is in

    @rank_zero_only
    def draw(self) -> None:
        """Write the figure (train raw + smoothed, val points) to `path`."""
        start = time.perf_counter()
        self.read()
        plt = pyplot()
        callbacks = self._trainer.callbacks if self._trainer is not None else []
        curves = [c.curve() for c in callbacks if hasattr(c, "curve")]
        curves = [(name, points) for name, points in curves if points]
        fig, axes = plt.subplots(1, 1 + len(curves), figsize=(8 + 4 * len(curves), 4.5))
        ax = axes[0] if curves else axes
        for other, (name, points) in zip(axes[1:] if curves else [], curves, strict=True):
            steps, values = zip(*points, strict=True)
            other.plot(steps, values, "o-", color="tab:green")
            other.set(xlabel="optimizer step", ylabel=name, title=name)
            other.grid(alpha=0.3)
        if self.train:
            steps, losses = zip(*self.train, strict=True)
            ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
            ax.plot(
                steps,
                smooth(list(losses), self.smoothing),
                color="tab:blue",
                label="train (smoothed)",
            )
        if self.val:
            steps, losses = zip(*self.val, strict=True)
            ax.plot(steps, losses, "o-", color="tab:orange", label="val (fixed noise)")
        ax.set(xlabel="optimizer step", ylabel="MSE loss", title="Training loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.path, dpi=100)
        plt.close(fig)
        self.seconds += time.perf_counter() - start
