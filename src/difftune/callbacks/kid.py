"""`KIDCallback`: is fine-tuning getting closer to the target data? KID (and FID) as it trains.

Every `every_n_steps` optimizer steps, at the start (step 0: the base model) and at the end, it
samples `num_samples` images with DDIM from one fixed noise (the EMA UNet when EMA is on) and
measures their KID against `num_real` held-out images of the data module's validation set. The
real images' features are computed once per run. Values are logged to every logger as
`val/kid_<features>` (and `val/kid_<features>_std`, `val/fid_<features>`), put in
`trainer.callback_metrics`, and kept in `history`. See `difftune.metrics.distance` for the
features: only `features=inception` gives numbers comparable with published ones.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from difftune.callbacks import kid_cache
from difftune.callbacks.fixed_noise import sample_fixed_noise
from difftune.core.ema import ema_unet
from difftune.errors import DifftuneError
from difftune.metrics.distance import (
    build_feature_extractor,
    extract_features,
    fid_from_features,
    kid_from_features,
    resolve_subset_size,
)
from difftune.pictures.images import to_unit

log = logging.getLogger(__name__)


class KIDCallback(Callback):
    """Logs KID (optionally FID) of fixed-noise samples against held-out real images."""

    def __init__(
        self,
        every_n_steps: int = 100,
        num_samples: int = 64,
        num_real: int | None = None,
        features: str | nn.Module = "small",
        num_inference_steps: int = 20,
        batch_size: int = 32,
        subset_size: int | None = None,
        subsets: int = 100,
        fid: bool = False,
        seed: int = 0,
        image_size: int | None = None,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        prefix: str = "val",
        cache_dir: str | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise DifftuneError(f"callbacks.kid.every_n_steps={every_n_steps} must be >= 1")
        if num_samples < 2:
            raise DifftuneError(f"callbacks.kid.num_samples={num_samples} must be >= 2")
        if num_real is not None and num_real < 2:
            raise DifftuneError(f"callbacks.kid.num_real={num_real} must be >= 2 (or null: all)")
        if batch_size < 1:
            raise DifftuneError(f"callbacks.kid.batch_size={batch_size} must be >= 1")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.num_real = num_real
        self.features = features
        self.num_inference_steps = num_inference_steps
        self.batch_size = batch_size
        self.subset_size = subset_size
        self.subsets = subsets
        self.fid = fid
        self.seed = seed
        self.image_size = image_size
        self.model_name = model_name
        self.pretrained = pretrained
        self.prefix = prefix
        self.cache_dir = cache_dir  # the step-0 (base model) KID, shared by a sweep's jobs
        self.history: list[tuple[int, float]] = []  # (optimizer step, KID mean)
        self.seconds = 0.0  # wall time spent here, reported against the whole fit
        self.extractor: nn.Module | None = None
        self.real_features: torch.Tensor | None = None
        self._subset_size: int | None = None
        self._last_step = -1

    @property
    def feature_name(self) -> str:
        """The extractor's name, as it appears in the metric names (`kid_small`, ...)."""
        if isinstance(self.features, str):
            return self.features
        return getattr(self.features, "name", type(self.features).__name__.lower())

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Build the extractor on rank 0 before training, so a bad `features` fails at once."""
        if stage == "fit" and trainer.is_global_zero and self.extractor is None:
            if isinstance(self.features, str):
                self.extractor = build_feature_extractor(
                    self.features, model_name=self.model_name, pretrained=self.pretrained,
                    seed=self.seed,
                )  # fmt: skip
            else:
                self.extractor = self.features
        self.real_features = None  # once per run (per fit call)

    def _real_images(self, trainer: Trainer) -> list[torch.Tensor]:
        """Up to `num_real` held-out images in [0, 1], as batches."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "val_dataloader"):
            raise DifftuneError("callbacks.kid needs a data module with a val_dataloader()")
        wanted = self.num_real if self.num_real is not None else float("inf")
        batches, count = [], 0
        for batch in datamodule.val_dataloader():
            images = batch["images"] if isinstance(batch, dict) else batch
            images = images[: max(0, int(min(wanted - count, images.shape[0])))]
            if images.shape[0]:
                batches.append(to_unit(images).float())
                count += images.shape[0]
            if count >= wanted:
                break
        if count < 2:
            raise DifftuneError(
                f"callbacks.kid: the held-out set has {count} images, KID needs >= 2 "
                "(raise data.val_size)"
            )
        if self.num_real is not None and count < self.num_real:
            warnings.warn(
                f"callbacks.kid.num_real={self.num_real} clamped to {count}: the held-out set "
                f"has only {count} images (data.val_size)",
                UserWarning,
                stacklevel=2,
            )
        return batches

    def _real_features(self, trainer: Trainer) -> torch.Tensor:
        if self.real_features is None:
            self.real_features = extract_features(self.extractor, self._real_images(trainer))
            self._subset_size = resolve_subset_size(
                self.subset_size, self.real_features.shape[0], self.num_samples
            )
        return self.real_features

    def _generate(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        """`num_samples` DDIM samples in [0, 1] from the fixed noise of `seed`, in batches."""
        unet = ema_unet(trainer) or pl_module.unet
        x_0 = sample_fixed_noise(
            trainer, pl_module, unet, self.num_samples, self.seed, self.num_inference_steps,
            self.image_size, batch_size=self.batch_size,
        )  # fmt: skip
        return to_unit(x_0).float()

    def _measure(
        self, trainer: Trainer, pl_module: LightningModule, real: torch.Tensor
    ) -> dict[str, float]:
        """Sample and measure KID (and FID) against the real features."""
        fake = extract_features(self.extractor, self._generate(trainer, pl_module), self.batch_size)
        name = f"{self.prefix}/kid_{self.feature_name}"
        mean, std = kid_from_features(real, fake, self._subset_size, self.subsets, self.seed)
        metrics = {name: mean, f"{name}_std": std}
        if self.fid:
            metrics[f"{self.prefix}/fid_{self.feature_name}"] = fid_from_features(real, fake)
        return metrics

    def _cache_key(self, trainer: Trainer, pl_module: LightningModule, real: torch.Tensor) -> str:
        """What the step-0 KID depends on: sampling weights, real features, settings."""
        settings = {
            "features": self.feature_name, "num_samples": self.num_samples,
            "steps": self.num_inference_steps, "seed": self.seed, "size": self.image_size,
            "subset_size": self._subset_size, "subsets": self.subsets, "fid": self.fid,
            "prefix": self.prefix, "schedule": dict(pl_module.noise_scheduler.config),
        }  # fmt: skip
        return kid_cache.cache_key(ema_unet(trainer) or pl_module.unet, real, settings)

    @rank_zero_only
    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Sample, measure, log and record the distances at the current step."""
        start = time.perf_counter()
        step = trainer.global_step
        self._last_step = step
        if self.extractor is None:
            self.setup(trainer, pl_module, "fit")
        real = self._real_features(trainer)
        cached_as = None
        if step == 0 and self.cache_dir:
            cached_as = self._cache_key(trainer, pl_module, real)
        metrics = kid_cache.read(self.cache_dir, cached_as) if cached_as else None
        if metrics is not None:
            log.info("step 0: the base model's KID from %s (%s.json)", self.cache_dir, cached_as)
        else:
            metrics = self._measure(trainer, pl_module, real)
            if cached_as:
                kid_cache.write(self.cache_dir, cached_as, metrics)
        self.history.append((step, metrics[f"{self.prefix}/kid_{self.feature_name}"]))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self.seconds += time.perf_counter() - start
        return metrics

    def curve(self) -> tuple[str, list[tuple[int, float]]]:
        """The metric's name and its (step, value) points, for `loss_curve.png`."""
        return f"{self.prefix}/kid_{self.feature_name}", list(self.history)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.evaluate(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)
