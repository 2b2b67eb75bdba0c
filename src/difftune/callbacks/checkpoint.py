"""Save `last.ckpt` when training ends, whatever the periodic checkpoint interval."""

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class FinalCheckpoint(Callback):
    """Writes `dirpath/last.ckpt` at the end of fit (before EMA weights replace the raw ones)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.save_checkpoint(self.dirpath / "last.ckpt")
