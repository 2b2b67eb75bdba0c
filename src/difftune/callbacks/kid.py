"""`KIDCallback`: is fine-tuning getting closer to the target data? KID (and FID) as it trains.

Every `every_n_steps` optimizer steps, at the start (step 0: the base model) and at the end, it
samples `num_samples` images with DDIM from one fixed noise (the EMA UNet when EMA is on) and
measures their KID against `num_real` held-out images of the data module's validation set, with
torchmetrics' KID/FID (`difftune.metrics.distance`), which keep the real images' features for the
whole run. The metric objects live here, on the module's device, never in the LightningModule
(EMA deep-copies it). Values are logged to every logger as `val/kid_<features>` (and
`val/kid_<features>_std`, `val/fid_<features>`), put in `trainer.callback_metrics`, and kept in
`history`. See `difftune.metrics.features`: only `features=inception` gives numbers comparable
with published ones.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torchmetrics import MetricCollection

from difftune.callbacks import kid_cache
from difftune.callbacks.fixed_noise import sample_fixed_noise
from difftune.callbacks.periodic import EveryNSteps
from difftune.core.ema import ema_unet
from difftune.errors import DifftuneError
from difftune.metrics.distance import compute_distances, distance_metrics
from difftune.metrics.features import FEATURES, build_feature_extractor, feature_name
from difftune.pictures.images import to_unit

log = logging.getLogger(__name__)


class KIDCallback(EveryNSteps):
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
        if isinstance(features, str) and features not in FEATURES:
            raise DifftuneError(
                f"callbacks.kid.features={features!r} is not one of {', '.join(FEATURES)}"
            )
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
        self.metrics: MetricCollection | None = None  # KID (FID), holding the real features
        self._real_digest = ""  # sha256 of the held-out images, for the step-0 cache key

    @property
    def feature_name(self) -> str:
        """The extractor's name, as it appears in the metric names (`kid_small`, ...)."""
        return feature_name(self.features)

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
        self.metrics = None  # the real features: once per run (per fit call)

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

    def _real_metrics(self, trainer: Trainer, pl_module: LightningModule) -> MetricCollection:
        """KID (and FID) metrics on the module's device, fed the held-out images once per run."""
        if self.metrics is None:
            real = self._real_images(trainer)
            metrics = distance_metrics(
                self.extractor, sum(b.shape[0] for b in real), self.num_samples, fid=self.fid,
                subset_size=self.subset_size, subsets=self.subsets,
            ).to(pl_module.device)  # fmt: skip
            for batch in real:
                metrics.update(batch.to(pl_module.device), real=True)
            self._real_digest = kid_cache.digest(real)
            self.metrics = metrics
        return self.metrics

    def _generate(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        """`num_samples` DDIM samples in [0, 1] from the fixed noise of `seed`, in batches."""
        unet = ema_unet(trainer) or pl_module.unet
        x_0 = sample_fixed_noise(
            trainer, pl_module, unet, self.num_samples, self.seed, self.num_inference_steps,
            self.image_size, batch_size=self.batch_size,
        )  # fmt: skip
        return to_unit(x_0).float()

    def _measure(
        self, trainer: Trainer, pl_module: LightningModule, collection: MetricCollection
    ) -> dict[str, float]:
        """Sample and measure KID (and FID) against the real images."""
        for batch in self._generate(trainer, pl_module).split(self.batch_size):
            collection.update(batch, real=False)
        values = compute_distances(collection, self.feature_name, self.seed)
        return {f"{self.prefix}/{name}": value for name, value in values.items()}

    def _cache_key(self, trainer: Trainer, pl_module: LightningModule) -> str:
        """What the step-0 KID depends on: sampling weights, real images, settings."""
        settings = {
            "features": self.feature_name, "model_name": self.model_name,
            "pretrained": self.pretrained, "num_samples": self.num_samples,
            "steps": self.num_inference_steps, "seed": self.seed, "size": self.image_size,
            "subset_size": self.metrics["kid"].subset_size, "subsets": self.subsets,
            "fid": self.fid, "prefix": self.prefix, "real_images": self._real_digest,
            "schedule": dict(pl_module.noise_scheduler.config),
        }  # fmt: skip
        return kid_cache.cache_key(ema_unet(trainer) or pl_module.unet, settings)

    @rank_zero_only
    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Sample, measure, log and record the distances at the current step."""
        start = time.perf_counter()
        step = trainer.global_step
        self.last_step = step
        if self.extractor is None:
            self.setup(trainer, pl_module, "fit")
        collection = self._real_metrics(trainer, pl_module)
        cached_as = None
        if step == 0 and self.cache_dir:
            cached_as = self._cache_key(trainer, pl_module)
        metrics = kid_cache.read(self.cache_dir, cached_as) if cached_as else None
        if metrics is not None:
            log.info("step 0: the base model's KID from %s (%s.json)", self.cache_dir, cached_as)
        else:
            metrics = self._measure(trainer, pl_module, collection)
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

    def act(self, trainer: Trainer, pl_module: LightningModule) -> Any:
        return self.evaluate(trainer, pl_module)
