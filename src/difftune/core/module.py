"""`DiffusionFineTuner`: the DDPM objective (Ho et al. 2020, Alg. 1) as a LightningModule."""

import functools
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from lightning.pytorch import LightningModule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from difftune.core.attention import set_attention
from difftune.core.conditioning import (
    add_class_embedding,
    check_conditioning,
    drop_labels,
    null_label,
)
from difftune.core.options import check_module_options
from difftune.core.prediction import check_prediction_type, min_snr_weights, training_target

BATCHES_SEEN = "difftune_batches_seen"  # checkpoint key of the batch counter that seeds the noise

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
LRSchedulerFactory = Callable[[Optimizer], LRScheduler]


def compile_unet_forward() -> Callable[..., Any] | None:
    """`torch.compile` of `UNet2DModel.forward` (unbound: no compiled submodule, no `_orig_mod.`
    keys, and a deep copy of the module, as EMA makes, calls its own weights), for static shapes
    (no dynamic-shape recompile after the first batch); None, with one warning, where torch
    cannot compile."""
    try:
        return torch.compile(UNet2DModel.forward, dynamic=False)
    except RuntimeError as error:  # e.g. a Python version dynamo does not support yet
        warn_eager(error)
        return None


def warn_eager(error: Exception) -> None:
    """The one warning of a compile that failed: the run goes on eager."""
    first_line = (str(error).splitlines() or [""])[0]
    warnings.warn(
        f"model.compile=true: torch.compile failed ({type(error).__name__}: {first_line}); "
        "training runs eager",
        stacklevel=3,
    )


class DiffusionFineTuner(LightningModule):
    """Fine-tunes a pretrained `UNet2DModel` with MSE against the scheduler's training target."""

    #: what it logs, val/loss when data.val_size is not 0 (run/objective.py checks `objective=`)
    METRICS = ("train/loss", "val/loss")

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
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        attention: str = "sdpa",
        conditioning: str | None = None,
        class_names: Sequence[str] | None = None,
        p_uncond: float = 0.1,
        class_embedding_lr: float | None = None,
    ) -> None:
        super().__init__()
        check_prediction_type(noise_scheduler.config.prediction_type)
        self.class_names = check_conditioning(unet, conditioning, class_names, p_uncond)
        class_names = self.class_names  # a plain list in the hparams (instantiate passes a
        # ListConfig, which a weights_only checkpoint load refuses)
        if self.class_names is not None:  # starts exactly at the pretrained model, every label
            unet = add_class_embedding(unet, self.class_names)
        self.p_uncond = p_uncond
        check_module_options(
            snr_gamma, noise_offset, class_embedding_lr,
            gradient_checkpointing=gradient_checkpointing, channels_last=channels_last,
            compile=compile,
        )  # fmt: skip
        self.class_embedding_lr = class_embedding_lr
        self.unet = unet.train()  # from_pretrained returns eval mode; Lightning keeps modes
        self.noise_scheduler = noise_scheduler
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.pretrained = pretrained
        self.seed = seed
        self.snr_gamma = snr_gamma
        self.noise_offset = noise_offset
        self.batches_seen = 0  # training batches drawn so far, this run and the ones it resumes
        if gradient_checkpointing:  # recompute each block's activations in the backward
            self.unet.enable_gradient_checkpointing()
        self.channels_last = channels_last
        if channels_last:  # NHWC convolutions (cuDNN's fast path under bf16/fp16)
            self.unet.to(memory_format=torch.channels_last)
        set_attention(self.unet, attention)
        self.compile_unet = compile  # `compile` itself is nn.Module's method
        self._compiled_forward: Callable[..., Any] | None = None  # built in `on_fit_start`
        self._compiled_calls = 0
        self._compiled_batch = 0  # the largest training batch the compiled forward was built for
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
        self,
        x_0: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """‖target − UNet(x_t, t)‖² averaged over pixels and batch (Ho et al. 2020, Eq. 14).

        With `snr_gamma`, each image's error is weighted by min-SNR-γ (high-noise steps, which set
        colour and layout, then count as much as the low-noise detail steps).
        """
        x_t = self.noise_scheduler.add_noise(x_0, noise, t)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        model_output = self.unet_output(x_t, t, class_labels)
        target = training_target(self.noise_scheduler, x_0, noise, t)
        if self.snr_gamma is None:
            return F.mse_loss(model_output.float(), target.float())
        per_image = F.mse_loss(model_output.float(), target.float(), reduction="none")
        weights = min_snr_weights(self.noise_scheduler, t, self.snr_gamma)
        return (per_image.mean(dim=(1, 2, 3)) * weights).mean()

    def on_fit_start(self) -> None:
        if self.compile_unet and self._compiled_forward is None:  # here: ddp_spawn pickles first
            self._compiled_forward = compile_unet_forward()

    def unet_output(
        self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """UNet(x_t, t, c), compiled where `compile` is on and the first compiled call succeeds."""
        if not self._runs_compiled(x_t):
            return self.unet(x_t, t, class_labels).sample
        try:
            output = self._compiled_forward(self.unet, x_t, t, class_labels).sample
        except Exception as error:  # compile errors surface on the first call; later ones are real
            if self._compiled_calls:
                raise
            warn_eager(error)
            self._compiled_forward = None
            return self.unet(x_t, t, class_labels).sample
        self._compiled_calls += 1
        return output

    def _runs_compiled(self, x_t: torch.Tensor) -> bool:
        """Training steps of the largest batch so far go through the compiled forward; a smaller
        batch (an epoch's short last one, one that lost undecodable images) and validation run
        eager, where a recompile would cost minutes on a GPU for one step."""
        if self._compiled_forward is None or not (self.training and torch.is_grad_enabled()):
            return False
        self._compiled_batch = max(self._compiled_batch, x_t.shape[0])
        return x_t.shape[0] == self._compiled_batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """Ho et al. 2020, Alg. 1: noise x_0 at a random t, regress the target (diffusers'
        `train_unconditional.py` step); Lightning does the backward and the optimizer step."""
        self.batches_seen += 1
        x_0 = batch["images"]
        if x_0.shape[0] == 0:  # every image of this batch was undecodable
            return None
        generator = self._generator(self.batches_seen - 1)
        noise, t = self.draw_noise_and_timesteps(x_0, generator)
        labels = self.labels_of(batch, generator)
        loss = self.diffusion_loss(x_0, noise, t, labels)
        # the mean over ranks under DDP (one all-reduce of a scalar per step); not prog_bar:
        # Lightning reads progress-bar metrics on the host after every batch, which on a GPU
        # waits for the step (the bar shows the loss itself, read at most twice a second)
        self.log("train/loss", loss, batch_size=x_0.shape[0], sync_dist=True)
        return loss

    def labels_of(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """The batch's class ids for a conditional UNet (None otherwise); with a generator (in
        training) each is dropped to the null label with probability `p_uncond` (Ho & Salimans
        2022, Alg. 1)."""
        if self.class_names is None:
            return None
        labels = batch["labels"]
        if generator is None:
            return labels
        return drop_labels(labels, self.p_uncond, null_label(self.unet), generator)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BATCHES_SEEN] = self.batches_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A resumed run draws the noise and timesteps the uninterrupted run would have drawn."""
        self.batches_seen = int(checkpoint.get(BATCHES_SEEN, 0))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        x_0 = batch["images"]
        if x_0.shape[0] == 0:
            return None
        # Fixed noise and timesteps per validation batch: the value is comparable across steps.
        noise, t = self.draw_noise_and_timesteps(x_0, self._generator(-1 - batch_idx))
        loss = self.diffusion_loss(x_0, noise, t, self.labels_of(batch))
        self.log("val/loss", loss, prog_bar=True, batch_size=x_0.shape[0], sync_dist=True)
        return loss

    def parameter_groups(self) -> Any:
        """The UNet's parameters; the new class embedding in a group of its own when it has its
        own lr (from zero, AdamW moves it ~lr per step: 1e-5 would take 10⁵ steps to matter)."""
        if self.class_names is None or self.class_embedding_lr is None:
            return self.unet.parameters()
        embedding = list(self.unet.class_embedding.parameters())
        chosen = {id(p) for p in embedding}
        rest = [p for p in self.unet.parameters() if id(p) not in chosen]
        return [{"params": rest}, {"params": embedding, "lr": self.class_embedding_lr}]

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping; for a fused optimizer without a gradient scaler (bf16-mixed,
        32-true) torch's clipping of its gradients here, which Lightning refuses under any mixed
        precision because under fp16 the fused step unscales them only after the clip."""
        if not (gradient_clip_val and fused_without_scaler(self.trainer, optimizer)):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if str(gradient_clip_algorithm) == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.lr_scheduler_factory is None:
            return optimizer
        factory = self.lr_scheduler_factory
        if getattr(factory, "keywords", {}).get("num_training_steps") == -1:  # max_steps=-1
            # the length of an epoch-bounded run; diffusers' cosine took -1 as a length and
            # turned the lr from full to 0 and back at every step after the warm-up
            length = self.trainer.estimated_stepping_batches  # optimizer steps, accumulation in
            factory = functools.partial(factory, num_training_steps=int(length))
        scheduler = factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def fused_without_scaler(trainer: Any, optimizer: Optimizer) -> bool:
    """A fused optimizer step (torch's `_step_supports_amp_scaling`: it takes `found_inf` and
    would unscale fp16 gradients itself) and no gradient scaler (32-true, bf16-mixed)."""
    fused = getattr(optimizer, "_step_supports_amp_scaling", False)
    return fused and getattr(trainer.precision_plugin, "scaler", None) is None
