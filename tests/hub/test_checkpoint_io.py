"""Checkpoints: written atomically, the previous one kept on any failure, loaded weights-only."""

import errno
import os
import re

import pytest
import torch

import difftune.hub.checkpoints as checkpoint_io
from difftune.errors import DifftuneError
from difftune.hub.checkpoints import AtomicCheckpointIO
from helpers.cli import FREE, one_line
from helpers.faults import full_disk_torch_save


@pytest.mark.parametrize(
    "fails, reason",
    [
        (
            full_disk_torch_save,  # torch's zip writer hides the errno: named as the likely cause
            "a short write, as on a full disk: PytorchStreamWriter failed writing file data/3",
        ),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), os.strerror(errno.ENOSPC)),
        (OSError(errno.EROFS, os.strerror(errno.EROFS)), os.strerror(errno.EROFS)),
    ],
    ids=["torch zip writer", "ENOSPC", "EROFS"],
)
def test_a_failed_checkpoint_write_keeps_the_previous_one(fails, reason, tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.ones(3)}, path)

    def failing_save(obj, f, *args, **kwargs):
        if callable(fails):
            fails(obj, f)
        raise fails

    monkeypatch.setattr(checkpoint_io.torch, "save", failing_save)
    with pytest.raises(DifftuneError) as err:
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    message = one_line(err)
    assert message.startswith(f"cannot write checkpoint {path} ({reason}")
    assert re.search(FREE, message) and f"resume with ckpt_path={path}" in message
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 4, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 4  # the previous checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left


class Payload:
    """Any class: unpickling it could run code, so weights_only refuses it."""


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, path)  # an arbitrary pickled object
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        AtomicCheckpointIO().load_checkpoint(path)
