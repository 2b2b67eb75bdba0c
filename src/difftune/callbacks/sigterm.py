"""SIGTERM under DDP: every rank stops after the same step, so last.ckpt gets written."""

import signal
import threading
from types import FrameType

from lightning.pytorch import Callback, LightningModule, Trainer


# Not Lightning's own SIGTERM handling for several processes (2.6): its handler broadcasts from
# rank 0 inside the signal handler. When the signal reaches every rank (SLURM's preemption,
# `scancel`, `timeout`, torchrun forwarding it), a rank may run that broadcast twice (its own
# signal and the one rank 0 forwards) or after the others moved on, and one rank raises
# SIGTERMException while the rest wait for it in the next step's all-reduce: the run hangs
# without a checkpoint (Lightning-AI/pytorch-lightning#20806; tests/run/test_ddp_and_clusters.py).
class StopTogether(Callback):
    """With more than one process, a SIGTERM to any rank stops all of them after the same batch.

    The handler only notes the signal (and calls any handler that was there before Lightning's,
    such as a cluster launcher's). After each training batch the ranks all-reduce the note; when
    any rank has one, every rank sets Lightning's stop flag at once, and Lightning's loop ends the
    batch and raises SIGTERMException on all of them together (`FinalCheckpoint` saves
    last.ckpt). One process keeps Lightning's handler as it is.
    """

    def __init__(self) -> None:
        self.received = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.received = False
        if trainer.world_size == 1 or threading.current_thread() is not threading.main_thread():
            return  # (Lightning sets no handler outside the main thread either)
        lightnings = trainer._signal_connector._sigterm_notifier_fn
        current = signal.getsignal(signal.SIGTERM)
        kept = [
            handler
            for handler in getattr(current, "signal_handlers", [current])
            if callable(handler) and handler != lightnings
        ]

        def note(signum: int, frame: FrameType | None) -> None:
            self.received = True
            for handler in kept:
                handler(signum, frame)

        signal.signal(signal.SIGTERM, note)  # Lightning's teardown puts the original back

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(
            self.received, all=False
        ):
            trainer._signal_connector.received_sigterm = True
