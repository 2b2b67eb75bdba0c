"""Save `last.ckpt` when training ends or is interrupted, whatever the periodic interval."""

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

INTERRUPTS = (KeyboardInterrupt, SIGTERMException)


class FinalCheckpoint(Callback):
    """Writes `dirpath/last.ckpt` at the end of fit (before EMA weights replace the raw ones),
    and on Ctrl-C (SIGINT) or SIGTERM, so an interrupted run resumes where it stopped."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.save_checkpoint(self.path)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, INTERRUPTS):
            return  # a crash: the last periodic checkpoint stays the one to resume from
        trainer.save_checkpoint(self.path)
        log.warning(
            "%s at step %d: saved %s; resume with ckpt_path=%s",
            "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C",
            trainer.global_step, self.path, self.path,
        )  # fmt: skip
