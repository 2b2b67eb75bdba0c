"""Checkpoints written atomically and read back with `weights_only` (no arbitrary pickles)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from difftune.errors import DifftuneError


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file beside the target, fsync, then rename over it.

    A process killed mid-write leaves the previous checkpoint of that name whole and loadable
    (and at worst a stray `.<name>.tmp-<pid>` file). Loading is always `weights_only=True`.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise DifftuneError(f"AtomicCheckpointIO takes no storage_options ({storage_options})")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def check_checkpoint_matches(ckpt_path: _PATH, module: torch.nn.Module) -> None:
    """A checkpoint of another architecture is one clear error, not a partial load."""
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any unreadable file: the same one line
        raise DifftuneError(
            f"ckpt_path={ckpt_path}: not a loadable checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    saved = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise DifftuneError(
            f"ckpt_path={ckpt_path}: no state_dict in it; not a difftune checkpoint"
        )
    expected = module.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    mismatched = [k for k in expected if k in saved and saved[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        example = (
            f"{mismatched[0]} is {tuple(saved[mismatched[0]].shape)} there, "
            f"{tuple(expected[mismatched[0]].shape)} here"
            if mismatched
            else (missing or unexpected)[0]
        )
        raise DifftuneError(
            f"ckpt_path={ckpt_path}: a checkpoint of another architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors, e.g. {example}); "
            "resume with the model config it was trained with"
        )
