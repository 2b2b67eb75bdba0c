"""`DiffusionFineTuner`: the DDPM objective (Ho et al. 2020, Alg. 1) as a LightningModule."""

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from lightning.pytorch import LightningModule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from difftune.core.prediction import check_prediction_type, min_snr_weights, training_target
from difftune.data.skip_report import SkipReport
from difftune.errors import DifftuneError

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("skip", "stop")

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
LRSchedulerFactory = Callable[[Optimizer], LRScheduler]


class DiffusionFineTuner(LightningModule):
    """Fine-tunes a pretrained `UNet2DModel` with MSE against the scheduler's training target."""

    def __init__(
        self,
        unet: UNet2DModel,
        noise_scheduler: SchedulerMixin,
        optimizer: OptimizerFactory,
        lr_scheduler: LRSchedulerFactory | None = None,
        pretrained: str | None = None,
        seed: int = 0,
        snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        on_nonfinite: str = "skip",
        max_consecutive_nonfinite: int = 10,
    ) -> None:
        super().__init__()
        check_prediction_type(noise_scheduler.config.prediction_type)
        self.unet = unet.train()  # from_pretrained returns eval mode; Lightning keeps modes
        self.noise_scheduler = noise_scheduler
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.pretrained = pretrained
        self.seed = seed
        if snr_gamma is not None and not snr_gamma > 0:
            raise DifftuneError(f"model.snr_gamma={snr_gamma} must be > 0 (5 is usual) or null")
        self.snr_gamma = snr_gamma
        if not noise_offset >= 0:
            raise DifftuneError(f"model.noise_offset={noise_offset} must be >= 0 (0.05-0.1 usual)")
        self.noise_offset = noise_offset
        if on_nonfinite not in NONFINITE_POLICIES:
            raise DifftuneError(
                f"on_nonfinite={on_nonfinite!r} is not one of {', '.join(NONFINITE_POLICIES)}"
            )
        if not (isinstance(max_consecutive_nonfinite, int) and max_consecutive_nonfinite >= 1):
            raise DifftuneError(
                f"max_consecutive_nonfinite={max_consecutive_nonfinite!r} must be an integer >= 1"
            )
        self.on_nonfinite = on_nonfinite
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.nonfinite_steps = 0  # batches whose loss was NaN/inf, all of this run
        self.consecutive_nonfinite = 0
        self.stop_reason: str | None = None  # set when the non-finite policy stopped training
        self.skip_report = SkipReport()  # undecodable images of this epoch, train and validation
        self._skip_step = False  # this batch's loss was not finite on some rank
        self.save_hyperparameters(ignore=["unet", "noise_scheduler", "optimizer", "lr_scheduler"])

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    def _generator(self, offset: int) -> torch.Generator:
        """A generator seeded by (seed, batch counter, rank), so the draws survive a resume."""
        seed = (self.seed * 1_000_003 + offset) * 4099 + self.global_rank
        return torch.Generator(device=self.device).manual_seed(seed % 2**63)

    def draw_noise_and_timesteps(
        self, x_0: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ε ~ N(0, I) (+ a per-image, per-channel offset: Guttenberg 2023) and t ~ U{0, …, T−1}."""
        noise = torch.randn(x_0.shape, generator=generator, device=x_0.device, dtype=x_0.dtype)
        if self.noise_offset:
            offset_shape = (x_0.shape[0], x_0.shape[1], 1, 1)
            offset = torch.randn(offset_shape, generator=generator, device=x_0.device)
            noise = noise + self.noise_offset * offset.to(x_0.dtype)
        t = torch.randint(
            0, self.num_train_timesteps, (x_0.shape[0],), generator=generator, device=x_0.device
        )
        return noise, t

    def diffusion_loss(
        self, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """‖target − UNet(x_t, t)‖² averaged over pixels and batch (Ho et al. 2020, Eq. 14).

        With `snr_gamma`, each image's error is weighted by min-SNR-γ (high-noise steps, which set
        colour and layout, then count as much as the low-noise detail steps).
        """
        x_t = self.noise_scheduler.add_noise(x_0, noise, t)
        model_output = self.unet(x_t, t).sample
        target = training_target(self.noise_scheduler, x_0, noise, t)
        if self.snr_gamma is None:
            return F.mse_loss(model_output.float(), target.float())
        per_image = F.mse_loss(model_output.float(), target.float(), reduction="none")
        weights = min_snr_weights(self.noise_scheduler, t, self.snr_gamma)
        return (per_image.mean(dim=(1, 2, 3)) * weights).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """The diffusion loss of one batch; a zero-gradient stand-in when it is not finite."""
        x_0 = batch["images"]
        skipped = self.skip_report.add("train", batch)
        self.log(
            "data/skipped",
            float(skipped),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
        )
        if x_0.shape[0] == 0:  # every image of this batch was undecodable
            return None
        total_batch_idx = self.trainer.fit_loop.epoch_loop.total_batch_idx
        noise, t = self.draw_noise_and_timesteps(x_0, self._generator(total_batch_idx))
        loss = self.diffusion_loss(x_0, noise, t)
        # every rank takes the same decision (one all-reduce of a bool per step under DDP)
        finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
        if not finite:
            return self._skip_nonfinite()
        self.consecutive_nonfinite = 0
        # the mean over ranks under DDP (one all-reduce of a scalar per step)
        self.log("train/loss", loss, prog_bar=True, batch_size=x_0.shape[0], sync_dist=True)
        return loss

    def _skip_nonfinite(self) -> torch.Tensor:
        """A zero loss with zero gradients for this batch (every parameter still gets one, as DDP
        needs), no optimizer step after it (see `optimizer_step`); stop per `on_nonfinite`."""
        self._skip_step = True
        self.nonfinite_steps += 1
        self.consecutive_nonfinite += 1
        self.log("train/nonfinite_skipped", float(self.nonfinite_steps), on_step=True)
        step = self.trainer.global_step
        if self.on_nonfinite == "stop":
            self.stop_reason = f"non-finite loss at step {step} (on_nonfinite=stop)"
        elif self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
            self.stop_reason = (
                f"{self.consecutive_nonfinite} consecutive non-finite losses up to step {step} "
                f"(max_consecutive_nonfinite={self.max_consecutive_nonfinite}); lower the lr or "
                "check the data"
            )
        else:
            log.warning("non-finite loss at step %d: batch skipped (%d so far)", step,
                        self.nonfinite_steps)  # fmt: skip
        if self.stop_reason is not None:
            self.trainer.should_stop = True
        return torch.stack([p.sum() for p in self.unet.parameters()]).sum() * 0.0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure=None):
        """The usual step, unless the batch was non-finite on some rank: then its (zero)
        gradients are dropped and AdamW leaves weights and moments untouched on every rank.

        With gradient accumulation a non-finite micro-batch only adds zeros; the step is skipped
        when the last micro-batch of the window was the non-finite one.
        """

        def closure() -> Any:
            self._skip_step = False
            loss = optimizer_closure()
            if self._skip_step:
                optimizer.zero_grad(set_to_none=True)
            return loss

        optimizer.step(closure=closure)

    def on_train_epoch_end(self) -> None:
        """One line per epoch (not per image) saying which images were skipped and why."""
        self.skip_report.flush("train", f"epoch {self.current_epoch}", self.trainer)

    def on_validation_epoch_end(self) -> None:
        """The same for the held-out images, once per validation."""
        self.skip_report.flush("val", f"validation at step {self.global_step}", self.trainer)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.skip_report.add("val", batch)
        x_0 = batch["images"]
        if x_0.shape[0] == 0:
            return None
        # Fixed noise and timesteps per validation batch: the value is comparable across steps.
        noise, t = self.draw_noise_and_timesteps(x_0, self._generator(-1 - batch_idx))
        loss = self.diffusion_loss(x_0, noise, t)
        self.log("val/loss", loss, prog_bar=True, batch_size=x_0.shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.unet.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
