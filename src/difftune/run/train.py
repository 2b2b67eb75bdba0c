"""`train(cfg)`: check the config, build everything with Hydra, fit, export the pipeline."""

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from difftune.callbacks import FinalCheckpoint
from difftune.core.ema import ema_unet
from difftune.core.module import DiffusionFineTuner
from difftune.data import ImageDataModule
from difftune.errors import DifftuneError
from difftune.hub.checkpoints import check_checkpoint_matches
from difftune.hub.export import reexport_hint
from difftune.hub.model_card import dataset_name, write_model_card
from difftune.hub.pipelines import export_pipeline
from difftune.hub.push import push_to_hub
from difftune.run.checks import check_train_config
from difftune.run.disk import reported_writes
from difftune.run.loggers import check_loggers, log_config
from difftune.run.provenance import record_run
from difftune.run.resume import latest_checkpoint, register_run
from difftune.run.run_dir import claim_run_dir

log = logging.getLogger(__name__)


def instantiate_all(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` node of a dict config, skipping nulls (switched-off entries)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(node) for node in cfg.values() if node is not None]


def check_optimizer(optimizer_cfg: DictConfig) -> None:
    """Build the optimizer once on a stand-in parameter, so torch checks its arguments now."""
    stand_in = [torch.nn.Parameter(torch.zeros(1))]
    hydra.utils.instantiate(optimizer_cfg, params=stand_in, _partial_=False)


def build(cfg: DictConfig) -> tuple[ImageDataModule, DiffusionFineTuner, Trainer]:
    """The data module, the LightningModule and the Trainer of a composed training config.

    Built cheapest first, so a value a library rejects is reported before the UNet loads.
    """
    callbacks: list[Callback] = instantiate_all(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.get("ema") is not None:  # before last.ckpt's writer: it saves the step's average too
        final = [i for i, c in enumerate(callbacks) if isinstance(c, FinalCheckpoint)]
        callbacks.insert(final[0] if final else len(callbacks), hydra.utils.instantiate(cfg.ema))
    loggers = instantiate_all(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_optimizer(cfg.model.optimizer)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    log_config(loggers, cfg)
    return datamodule, module, trainer


def export(cfg: DictConfig, trainer: Trainer, module: DiffusionFineTuner, metrics: dict) -> Path:
    """Write `pipeline/` (EMA weights when on) with its model card; then push when asked.

    The exported UNet's `sample_size` is the training resolution, so the pipeline samples at it.
    A failed push raises (exit 2, one line with the retry command) after the local export.
    """
    unet = ema_unet(trainer) or module.unet
    unet.register_to_config(sample_size=int(cfg.data.image_size))
    path = export_pipeline(unet, module.noise_scheduler, Path(cfg.export_dir))
    grids = sorted((Path(cfg.paths.output_dir) / "samples").glob("step_*.png"))
    write_model_card(
        path,
        base_model=cfg.model.get("pretrained"),
        dataset=dataset_name(cfg.data),
        steps=trainer.global_step,
        effective_batch=effective_batch(cfg.data.batch_size, trainer),
        lr=cfg.model.optimizer.lr,
        precision=str(trainer.precision),
        ema=cfg.ema.decay if cfg.get("ema") else None,
        metrics=metrics,
        sample_grid=grids[-1] if grids else None,
        image_size=int(cfg.data.image_size),
        repo_id=cfg.hub.repo_id,
    )
    log.info("pipeline saved to %s", path)
    if cfg.push_to_hub:  # only now: a failed upload never costs the local export
        log.info("pushed to %s", push_to_hub(path, cfg.hub.repo_id, private=cfg.hub.private))
    return path


def effective_batch(batch_size: int, trainer: Trainer) -> int:
    """Images per optimizer step: batch × accumulation × processes."""
    return batch_size * trainer.accumulate_grad_batches * trainer.world_size


def train(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune `cfg.model` on `cfg.data`; write checkpoints, samples, curves and `pipeline/`."""
    check_train_config(cfg)
    with claim_run_dir(cfg):  # writable, and no other run's: checked before anything loads
        return fit_and_export(cfg)


def fit_and_export(cfg: DictConfig) -> dict[str, float]:
    """The body of `train`, in a claimed run dir: resume, seed, build, fit, export."""
    if cfg.get("resume"):
        with open_dict(cfg):
            cfg.ckpt_path = str(latest_checkpoint(cfg))
        log.info("resume=true: resuming from %s", cfg.ckpt_path)
    check_loggers(cfg)
    seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg)
    batch = effective_batch(cfg.data.batch_size, trainer)
    log.info("effective batch %d (world size %d)", batch, trainer.world_size)
    for logger in trainer.loggers:
        logger.log_hyperparams({"effective_batch": batch, "world_size": trainer.world_size})
    if trainer.is_global_zero:
        record_run(cfg, Path(cfg.paths.output_dir))
    start = time.perf_counter()
    if cfg.get("ckpt_path"):
        check_checkpoint_matches(cfg.ckpt_path, module)
    if trainer.is_global_zero:
        register_run(cfg)
    try:
        trainer.fit(
            module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True
        )
    except SIGTERMException:
        raise DifftuneError(
            f"stopped by SIGTERM at step {trainer.global_step}; "
            f"resume with ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}"
        ) from None
    seconds = time.perf_counter() - start
    in_callbacks = sum(getattr(callback, "seconds", 0.0) for callback in trainer.callbacks)
    log.info(
        "fit took %.1f s, of which %.1f s (%.0f%%) in sample grids, curves and metrics",
        seconds, in_callbacks, 100 * in_callbacks / seconds,
    )  # fmt: skip
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        final = Path(cfg.paths.output_dir) / "final_metrics.json"
        final.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if module.stop_reason is not None:
        raise DifftuneError(
            f"training stopped: {module.stop_reason}; no export. The last checkpoint is in "
            f"{Path(cfg.paths.output_dir) / 'checkpoints'}"
        )
    if cfg.get("export_dir") and trainer.is_global_zero:
        last = next((c.path for c in trainer.callbacks if isinstance(c, FinalCheckpoint)), None)
        out = cfg.export_dir
        with reported_writes(out, "the pipeline", then=reexport_hint(last, out)):
            export(cfg, trainer, module, metrics)
    return metrics


def objective(metrics: dict[str, float], key: str | None) -> dict[str, float] | float:
    """What a job returns to Hydra: every final metric, or the one an optimising sweeper needs."""
    if key is None:
        return metrics
    if key not in metrics:
        raise DifftuneError(
            f"objective={key}: not among the final metrics ({', '.join(sorted(metrics))})"
        )
    return metrics[key]
