"""`train(cfg)`: seed, instantiate, fit, return the final metrics (the template's shape).

Everything around the fit lives where Lightning and Hydra call it: the export, model card,
`final_metrics.json` and push in `callbacks.ExportPipeline`; the run record in the Hydra
callback `run.provenance.RunRecord`; the non-finite policy in `callbacks.NonFiniteGuard`. The
callbacks run in the order conf/callbacks/default.yaml lists them.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hydra
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig

from difftune.callbacks.export import final_metrics
from difftune.hub.checkpoints import check_checkpoint_matches
from difftune.run.checks import check_train_config
from difftune.run.loggers import finished_runs, log_config
from difftune.run.notebook import as_python_call
from difftune.run.resume import checkpoint_to_resume, finished_metrics, index_this_run
from difftune.run.run_dir import claim_run_dir


def train(cfg: DictConfig) -> dict[str, float]:
    """Fine-tune `cfg.model` on `cfg.data`; checkpoints, grids, curves and `pipeline/` come from
    the callbacks. The config is read, never written."""
    check_train_config(cfg)
    with claim_run_dir(cfg), as_python_call(cfg):  # claim: checked before anything loads
        ckpt_path = checkpoint_to_resume(cfg)
        done = finished_metrics(cfg, ckpt_path)
        if done is not None:  # resumed at its max_steps: its outputs stay as they are
            return done
        seed_everything(cfg.seed, workers=True)
        with torch_flags(cfg.get("matmul_precision")):
            datamodule, module, trainer = build(cfg)
            if ckpt_path:
                check_checkpoint_matches(ckpt_path, module)
            index_this_run(cfg)
            with finished_runs(trainer):
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        return final_metrics(trainer)


@contextmanager
def torch_flags(matmul_precision: str | None) -> Iterator[None]:
    """torch's process-wide flags for the run: the float32 matmul precision (`high`: TF32; null:
    as it is) and what Lightning's Trainer sets (deterministic algorithms, cuDNN's benchmark and
    deterministic modes); after it, the ones before, so a notebook's next cell or a `-m` sweep's
    next job starts from those, not from this run's."""
    before = (
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if matmul_precision:
        torch.set_float32_matmul_precision(matmul_precision)
    try:
        yield
    finally:
        precision, deterministic, warn_only, benchmark, cudnn_deterministic = before
        torch.set_float32_matmul_precision(precision)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic


def build(cfg: DictConfig) -> tuple[Any, Any, Trainer]:
    """The data module, the LightningModule and the Trainer of a composed training config.

    Built cheapest first, so a value a library rejects is reported before the UNet loads.
    """
    callbacks = instantiate_all(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = instantiate_all(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_source()
    module = build_module(cfg.model, datamodule)
    log_config(loggers, cfg)
    return datamodule, module, trainer


def build_module(model_cfg: DictConfig, datamodule: Any) -> Any:
    """The LightningModule; with `model.conditioning` it gets the data's class names."""
    class_names = datamodule.class_names if model_cfg.get("conditioning") else None
    return hydra.utils.instantiate(model_cfg, class_names=class_names)


def instantiate_all(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` node of a dict config, skipping nulls (switched-off entries)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(node) for node in cfg.values() if node is not None]
