"""Faults injected on purpose: callbacks that kill, signal, block or poison a run at a step, a
full disk and a read-only mount. The callbacks are importable by a `train.py` subprocess
(`+callbacks.kill._target_=helpers.faults.KillAt`, with tests/ on PYTHONPATH)."""

import errno
import os
import signal
from pathlib import Path

from lightning.pytorch import Callback

import difftune.hub.checkpoints as checkpoint_io
import difftune.run.train as train_module


class AtStep(Callback):
    """Calls `action(trainer)` once, at the start of the batch that makes `step` optimizer steps."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.action(trainer)
            self.step = -1


class KillAt(Callback):
    """SIGKILL this process when the batch that would make optimizer step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class TermGroupAt(Callback):
    """Rank 0 sends SIGTERM to its whole process group (every rank and data worker, as SLURM's
    preemption or `scancel` does) when the batch that would make optimizer step `step` starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.killpg(os.getpgid(0), signal.SIGTERM)


class RankLosses(Callback):
    """Each rank's own training loss per step, to `<run dir>/losses_rank<r>.txt` (step, loss)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        path = Path(trainer.default_root_dir) / f"losses_rank{trainer.global_rank}.txt"
        with open(path, "a") as f:
            f.write(f"{trainer.global_step - 1} {float(outputs['loss'])!r}\n")


class BlockAt(Callback):
    """At optimizer step `step`: print `BLOCKED` on stdout, then wait for a signal (SIGKILL)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            print("BLOCKED", flush=True)
            signal.pause()


class PoisonOnRank(Callback):
    """NaN-fill the images of the batch at optimizer step `step` on DDP rank `rank` only."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch["images"].fill_(float("nan"))


class DiskFullAt(Callback):
    """From optimizer step `step` on, `torch.save` fails as it does on a full disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            checkpoint_io.torch.save = full_disk_torch_save


def full_disk_torch_save(obj, f, *args, **kwargs) -> None:
    """What torch's zip writer raises when the disk fills up mid-write (after some bytes)."""
    f.write(b"PK\x03\x04 part of a checkpoint")
    raise RuntimeError(
        "[enforce fail at inline_container.cc:664] . unexpected pos 1664 vs 1600\n"
        "PytorchStreamWriter failed writing file data/3: file write failed"
    )


def read_only(monkeypatch, root: Path) -> None:
    """Make creating files, directories and links under `root` fail as on a read-only mount."""

    def refusing(original, created):  # created(args) is the path the call would create
        def call(*args, **kwargs):
            target = Path(os.path.abspath(os.fsdecode(created(args))))
            if target.is_relative_to(root):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", refusing(os.open, lambda args: args[0]))
    monkeypatch.setattr(os, "mkdir", refusing(os.mkdir, lambda args: args[0]))
    monkeypatch.setattr(os, "symlink", refusing(os.symlink, lambda args: args[1]))


def run_with(cfg, *callbacks: Callback):
    """train(cfg) with extra callbacks appended to the ones the config builds."""
    original = train_module.instantiate_all

    def with_extra(node):
        built = original(node)
        return built + list(callbacks) if node is not None and "final_checkpoint" in node else built

    train_module.instantiate_all = with_extra
    try:
        return train_module.train(cfg)
    finally:
        train_module.instantiate_all = original
