"""At the end of fit: `final_metrics.json`, then `pipeline/` with its model card, then the push."""

import json
import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from difftune.callbacks.checkpoint import FinalCheckpoint
from difftune.callbacks.nonfinite import NonFiniteGuard
from difftune.callbacks.sample_grid import SampleGrid
from difftune.core.ema import EMA, ema_unet
from difftune.hub.export import reexport_hint
from difftune.hub.model_card import dataset_name, write_model_card
from difftune.hub.pipelines import export_pipeline
from difftune.hub.push import push_to_hub
from difftune.run.disk import reported_writes
from difftune.run.final_metrics import write_final_metrics

log = logging.getLogger(__name__)


def final_metrics(trainer: Trainer) -> dict[str, float]:
    """Every scalar the run logged last (train/loss, val/loss, KID, ...)."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def effective_batch(trainer: Trainer) -> int:
    """Images per optimizer step: batch × accumulation × processes."""
    return trainer.datamodule.batch_size * trainer.accumulate_grad_batches * trainer.world_size


class ExportPipeline(Callback):
    """Rank 0, after fit: `final_metrics.json` (stopped runs too); then, unless the non-finite
    guard stopped the run, the (EMA) UNet as a `DDPMPipeline` in `export_dir` (its `sample_size`
    the training resolution) with a model card; then the push when asked. A failed push raises
    (exit 2, one line with the retry command) after the local export, which it never costs."""

    def __init__(
        self,
        output_dir: str,
        export_dir: str | None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        private: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.export_dir = Path(export_dir) if export_dir else None
        self.push_to_hub = push_to_hub
        self.repo_id = repo_id
        self.private = private

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A conditional run's classes: `classes.json` ({"class_names", "null_label"})."""
        if trainer.is_global_zero and pl_module.class_names is not None:
            names = list(pl_module.class_names)
            text = json.dumps({"class_names": names, "null_label": len(names)}, indent=2)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "classes.json").write_text(text + "\n")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        write_final_metrics(self.output_dir / "final_metrics.json", final_metrics(trainer))
        stopped = any(isinstance(c, NonFiniteGuard) and c.stop_reason for c in trainer.callbacks)
        if self.export_dir is None or stopped:
            return
        last = next((c.path for c in trainer.callbacks if isinstance(c, FinalCheckpoint)), None)
        then = reexport_hint(last, self.export_dir)
        with reported_writes(self.export_dir, "the pipeline", then=then):
            path = self.export(trainer, pl_module)
        log.info("pipeline saved to %s", path)
        if self.push_to_hub:
            pushed = push_to_hub(path, self.repo_id, private=self.private)
            log.info("pushed to %s", pushed)

    def export(self, trainer: Trainer, pl_module: LightningModule) -> Path:
        """Write the pipeline and its model card; return the pipeline's path."""
        image_size = int(trainer.datamodule.image_size)
        unet = ema_unet(trainer) or pl_module.unet
        unet.register_to_config(sample_size=image_size)
        path = export_pipeline(unet, pl_module.noise_scheduler, self.export_dir)
        grids = sorted(
            p for c in trainer.callbacks if isinstance(c, SampleGrid)
            for p in c.dirpath.glob("step_*.png")
        )  # fmt: skip
        ema = next((c.decay for c in trainer.callbacks if isinstance(c, EMA)), None)
        write_model_card(
            path,
            base_model=pl_module.pretrained,
            dataset=dataset_name(trainer.datamodule.hparams),
            steps=trainer.global_step,
            effective_batch=effective_batch(trainer),
            lr=trainer.optimizers[0].defaults["lr"],
            precision=str(trainer.precision),
            ema=ema,
            metrics=final_metrics(trainer),
            sample_grid=grids[-1] if grids else None,
            image_size=image_size,
            repo_id=self.repo_id,
            class_names=pl_module.class_names,
        )
        return path
