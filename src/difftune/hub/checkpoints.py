"""Checkpoints written atomically and read back with `weights_only` (no arbitrary pickles)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.utilities import rank_zero_warn

from difftune.errors import DifftuneError
from difftune.run.disk import reported_writes


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file beside the target, fsync, then rename over it.

    A process killed mid-write leaves the previous checkpoint of that name whole and loadable
    (and at worst a stray `.<name>.tmp-<pid>` file). A write that fails (full disk, read-only
    dir) removes its temp file and ends in one line that says how to resume from what is kept.
    Loading is always `weights_only=True`.
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
            with reported_writes(path, "checkpoint", then=resume_hint(path.parent)):
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


def resume_hint(ckpt_dir: Path) -> str:
    """What to run after a failed write into `ckpt_dir`: resume from its newest checkpoint."""
    kept = max(ckpt_dir.glob("[!.]*.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
    if kept is None:
        return "no earlier checkpoint there: free space and start again"
    return f"nothing was replaced: free space, then resume with ckpt_path={kept}"


def state_dict_mismatch(
    expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of `saved` against `expected`, before any load:
    `load_state_dict(strict=False)` would raise on the first shape and load the rest."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    mismatched = [
        k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, mismatched


def check_checkpoint_matches(ckpt_path: _PATH, module: torch.nn.Module) -> None:
    """A checkpoint of another architecture is one clear error, not a partial load; one whose
    optimizer settings differ from the module's gets a warning (resuming restores them)."""
    if not zipfile.is_zipfile(ckpt_path):
        raise DifftuneError(
            f"ckpt_path={ckpt_path}: not a checkpoint (torch.save writes a zip archive, and this "
            "file is not one); pass a .ckpt that train.py wrote, e.g. "
            "outputs/<run>/checkpoints/last.ckpt"
        )
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any other unreadable file: the same one line
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
    missing, unexpected, mismatched = state_dict_mismatch(expected, saved)
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
    _warn_restored_optimizer(ckpt_path, state, module)


def _is_setting(value: Any) -> bool:
    """A number or a non-empty sequence of numbers (lr, betas, eps, ...), not a flag."""
    numbers = value if isinstance(value, list | tuple) else [value]
    return bool(numbers) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in numbers
    )


def _settings(param_group: dict[str, Any]) -> dict[str, Any]:
    """An optimizer param group's numeric settings; `lr` is the scheduler's base lr if any."""
    group = {**param_group, "lr": param_group.get("initial_lr", param_group.get("lr"))}
    return {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in group.items()
        if key not in ("params", "initial_lr") and _is_setting(value)
    }


def _warn_restored_optimizer(ckpt_path: _PATH, state: dict, module: torch.nn.Module) -> None:
    """One warning when the checkpoint's optimizer settings differ from those `module` builds."""
    saved = state.get("optimizer_states") or []
    if not saved or not hasattr(module, "configure_optimizers"):
        return
    built = module.configure_optimizers()
    optimizer = built["optimizer"] if isinstance(built, dict) else built
    asked = _settings(optimizer.param_groups[0])
    restored = _settings(saved[0]["param_groups"][0])
    changed = sorted(k for k in asked.keys() & restored.keys() if asked[k] != restored[k])
    if changed:
        rank_zero_warn(
            f"ckpt_path={ckpt_path}: resuming restores the checkpoint's optimizer settings "
            f"{', '.join(f'{k}={restored[k]}' for k in changed)}, not the command line's "
            f"{', '.join(f'model.optimizer.{k}={asked[k]}' for k in changed)}; to train on with "
            "new settings, fine-tune its export instead (model.pretrained=<its run dir>)"
        )
