"""`train(cfg)`: check the config, build everything with Hydra, fit, export the pipeline."""

import logging
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch import Callback, Trainer, seed_everything
from omegaconf import DictConfig

from difftune.config_checks import check_train_config
from difftune.data import ImageDataModule
from difftune.ema import ema_unet
from difftune.module import DiffusionFineTuner
from difftune.pipeline_io import export_pipeline

log = logging.getLogger(__name__)


def instantiate_all(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` node of a dict config, skipping nulls (switched-off entries)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(node) for node in cfg.values() if node is not None]


def build(cfg: DictConfig) -> tuple[ImageDataModule, DiffusionFineTuner, Trainer]:
    """The data module, the LightningModule and the Trainer of a composed training config."""
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    callbacks: list[Callback] = instantiate_all(cfg.get("callbacks"))
    if cfg.get("ema") is not None:  # last, so other callbacks see raw weights at train end
        callbacks.append(hydra.utils.instantiate(cfg.ema))
    loggers = instantiate_all(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune `cfg.model` on `cfg.data`; write checkpoints, samples, curves and `pipeline/`."""
    check_train_config(cfg)
    seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("export_dir") and trainer.is_global_zero:
        unet = ema_unet(trainer) or module.unet
        path = export_pipeline(unet, module.noise_scheduler, Path(cfg.export_dir))
        log.info("pipeline saved to %s", path)
    return metrics
