"""Faults for the run-safety tests, importable by a `train.py` subprocess (PYTHONPATH=tests)."""

import errno
import os
import signal
from pathlib import Path

from lightning.pytorch import Callback

import difftune.hub.checkpoints as checkpoint_io


class BlockAt(Callback):
    """At optimizer step `step`: print `BLOCKED` on stdout, then wait for a signal (SIGKILL)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            print("BLOCKED", flush=True)
            signal.pause()


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
