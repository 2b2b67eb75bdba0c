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

On a class-conditional module (`pl_module.class_names`) it samples `num_samples // n` images per
class (at least 2, each from its own noise) with classifier-free guidance at `cfg_scale` (None:
plain conditional), logs `val/kid_<features>` of all of them against all held-out images, and
`val/kid_<features>/<class>` (and `_std`) of each class's samples against that class's held-out
images (batch["labels"]); a class with fewer than 2 held-out images gets no per-class value.
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
from difftune.callbacks.fixed_noise import check_cfg_scale, sample_fixed_noise
from difftune.callbacks.periodic import EveryNSteps
from difftune.core.ema import ema_unet
from difftune.errors import DifftuneError, is_int_at_least
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
        cfg_scale: float | None = 3.0,
    ) -> None:
        for key, value, least in (
            ("every_n_steps", every_n_steps, 1), ("num_samples", num_samples, 2),
            ("num_inference_steps", num_inference_steps, 1), ("batch_size", batch_size, 1),
            ("subsets", subsets, 1),  # torchmetrics refused 0 at the first KID, in a traceback
        ):  # fmt: skip
            if not is_int_at_least(value, least):
                raise DifftuneError(f"callbacks.kid.{key}={value} must be >= {least}")
        if isinstance(features, str) and features not in FEATURES:
            raise DifftuneError(
                f"callbacks.kid.features={features!r} is not one of {', '.join(FEATURES)}"
            )
        for key, value in (("num_real", num_real), ("subset_size", subset_size)):
            if value is not None and not is_int_at_least(value, 2):
                raise DifftuneError(f"callbacks.kid.{key}={value} must be >= 2 (or null)")
        if not isinstance(fid, bool):  # bool("false") is True: a costly surprise
            raise DifftuneError(f"callbacks.kid.fid={fid!r}: expected true or false")
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
        self.cfg_scale = check_cfg_scale("callbacks.kid.cfg_scale", cfg_scale)
        self.history: list[tuple[int, float]] = []  # (optimizer step, KID mean)
        self.seconds = 0.0  # wall time spent here, reported against the whole fit
        self.extractor: nn.Module | None = None
        self.metrics: MetricCollection | None = None  # KID (FID), holding the real features
        self.class_metrics: dict[str, MetricCollection] = {}  # per class: KID, its real features
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
                    seed=self.seed, key="callbacks.kid.features",
                )  # fmt: skip
            else:
                self.extractor = self.features
        self.metrics = None  # the real features: once per run (per fit call)
        self.class_metrics = {}

    def _real_images(self, trainer: Trainer) -> list[torch.Tensor]:
        """Up to `num_real` held-out images in [0, 1], as batches."""
        return [images for images, _ in self._held_out(trainer)]

    def _held_out(self, trainer: Trainer) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Up to `num_real` held-out images in [0, 1] with their labels (None: none), as batches."""
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "val_dataloader"):
            raise DifftuneError("callbacks.kid needs a data module with a val_dataloader()")
        wanted = self.num_real if self.num_real is not None else float("inf")
        batches, count = [], 0
        for batch in datamodule.val_dataloader():
            images = batch["images"] if isinstance(batch, dict) else batch
            labels = batch.get("labels") if isinstance(batch, dict) else None
            keep = max(0, int(min(wanted - count, images.shape[0])))
            if keep:
                labels = None if labels is None else labels[:keep].cpu()
                batches.append((to_unit(images[:keep]).float(), labels))
                count += keep
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
            held_out = self._held_out(trainer)
            real = [images for images, _ in held_out]
            labels = self._class_labels(pl_module)
            metrics = distance_metrics(
                self.extractor, sum(b.shape[0] for b in real),
                self.num_samples if labels is None else len(labels), fid=self.fid,
                subset_size=self.subset_size, subsets=self.subsets,
            ).to(pl_module.device)  # fmt: skip
            for batch in real:
                metrics.update(batch.to(pl_module.device), real=True)
            self._real_digest = kid_cache.digest(real)
            if labels is not None:
                self.class_metrics = self._per_class_metrics(held_out, pl_module)
                self._real_digest = kid_cache.digest(real + [b for _, b in held_out])
            self.metrics = metrics
        return self.metrics

    def _per_class(self, class_names: list[str]) -> int:
        """Generated images per class: `num_samples // n`, at least 2."""
        return max(2, self.num_samples // len(class_names))

    def _class_labels(self, pl_module: LightningModule) -> torch.Tensor | None:
        """The class of each generated image (class 0's first), or None for an unconditional one."""
        names = getattr(pl_module, "class_names", None)
        if names is None:
            return None
        return torch.arange(len(names)).repeat_interleave(self._per_class(names))

    def _per_class_metrics(
        self, held_out: list[tuple[torch.Tensor, torch.Tensor | None]], pl_module: LightningModule
    ) -> dict[str, MetricCollection]:
        """KID per class, fed that class's held-out images; classes with < 2 of them left out."""
        if any(labels is None for _, labels in held_out):
            raise DifftuneError(
                "callbacks.kid: the model is class-conditional but the held-out batches have no "
                "labels (set data.label_column)"
            )
        images = torch.cat([images for images, _ in held_out])
        labels = torch.cat([labels for _, labels in held_out])
        names, out, skipped = pl_module.class_names, {}, []
        fake = self._per_class(names)
        for class_id, name in enumerate(names):
            real = images[labels == class_id]
            if real.shape[0] < 2:
                skipped.append(f"{name} ({real.shape[0]})")
                continue
            size = None if self.subset_size is None else min(self.subset_size, real.shape[0], fake)
            metrics = distance_metrics(
                self.extractor, real.shape[0], fake, subset_size=size, subsets=self.subsets
            ).to(pl_module.device)
            for batch in real.split(self.batch_size):
                metrics.update(batch.to(pl_module.device), real=True)
            out[name] = metrics
        if skipped:
            log.warning(
                "callbacks.kid: no per-class KID for %s: fewer than 2 held-out images (their "
                "samples still count in %s/kid_%s; raise data.val_size)",
                ", ".join(skipped), self.prefix, self.feature_name,
            )  # fmt: skip
        return out

    def _generate(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        """`num_samples` DDIM samples in [0, 1] from the fixed noise of `seed`, in batches."""
        unet = ema_unet(trainer) or pl_module.unet
        labels = self._class_labels(pl_module)
        x_0 = sample_fixed_noise(
            trainer, pl_module, unet, self.num_samples if labels is None else len(labels),
            self.seed, self.num_inference_steps, self.image_size, batch_size=self.batch_size,
            class_labels=labels, cfg_scale=None if labels is None else self.cfg_scale,
        )  # fmt: skip
        return to_unit(x_0).float()

    def _measure(
        self, trainer: Trainer, pl_module: LightningModule, collection: MetricCollection
    ) -> dict[str, float]:
        """Sample and measure KID (and FID) against the real images (and per class)."""
        generated = self._generate(trainer, pl_module)
        for batch in generated.split(self.batch_size):
            collection.update(batch, real=False)
        values = compute_distances(collection, self.feature_name, self.seed)
        out = {f"{self.prefix}/{name}": value for name, value in values.items()}
        names = getattr(pl_module, "class_names", None)
        if names is None:
            return out
        for name, images in zip(names, generated.split(self._per_class(names)), strict=True):
            if name not in self.class_metrics:
                continue
            for batch in images.split(self.batch_size):
                self.class_metrics[name].update(batch, real=False)
            values = compute_distances(self.class_metrics[name], self.feature_name, self.seed)
            out.update({f"{self.prefix}/{key}/{name}": value for key, value in values.items()})
        return out

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
        if getattr(pl_module, "class_names", None) is not None:  # unconditional keys as they were
            settings.update(classes=list(pl_module.class_names), cfg_scale=self.cfg_scale)
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
