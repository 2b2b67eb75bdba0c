"""Save `last.ckpt` when training ends or is interrupted, whatever the periodic interval."""

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from difftune.run.memory import out_of_memory

log = logging.getLogger(__name__)

INTERRUPTS = (KeyboardInterrupt, SIGTERMException)


# Not Lightning's ModelCheckpoint(save_last=True) / OnExceptionCheckpoint: the first leaves
# last.ckpt at the last period when a run ends between two (tests/run/test_resume.py::test_last_
# ckpt_holds_the_final_step_...), the second saves a crashed state over it (tests/run/test_
# interrupts.py::test_a_crash_keeps_the_last_good_checkpoint_...).
class FinalCheckpoint(Callback):
    """Writes `dirpath/last.ckpt` every N steps, at the end of fit (before EMA weights replace
    the raw ones), and on Ctrl-C (SIGINT) or SIGTERM, so a stopped run resumes where it was."""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        # Saved from the batch end (also at max_steps): a checkpoint taken in on_train_end
        # resumes with Lightning's logging step one ahead.
        step = trainer.global_step
        periodic = bool(self.every_n_train_steps) and step % self.every_n_train_steps == 0
        if step != self._saved_step and (periodic or 0 < trainer.max_steps <= step):
            self._save(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step != self._saved_step:  # ended by max_epochs, max_time or a stop
            self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume
        self._saved_step = trainer.global_step

    def _newest(self) -> str:
        """Where a run that stopped resumes from: the last checkpoint this run saved, if any."""
        if self._saved_step >= 0:
            return f"resume from ckpt_path={self.path}, step {self._saved_step}"
        if self.path.is_file():
            return f"resume from ckpt_path={self.path}"
        return "no checkpoint written yet"

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, INTERRUPTS):  # a crash: the last periodic checkpoint
            if out_of_memory(exception) is not None:  # stays the one to resume from
                exception.memory_hint = f"at step {trainer.global_step} ({self._newest()})"
            return
        self._save(trainer)
        exception.resume_hint = f"at step {trainer.global_step}; resume with ckpt_path={self.path}"
        log.warning(
            "%s at step %d: saved %s; resume with ckpt_path=%s",
            "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C",
            trainer.global_step, self.path, self.path,
        )  # fmt: skip
