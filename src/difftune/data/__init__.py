"""Training data: synthetic style scenes, Hugging Face datasets and image folders."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from difftune.data.datamodule import ImageDataModule
    from difftune.data.synthetic import SyntheticStyleDataset

__all__ = ["ImageDataModule", "SyntheticStyleDataset"]
_MODULES = {"ImageDataModule": "datamodule", "SyntheticStyleDataset": "synthetic"}


def __getattr__(name: str) -> Any:
    """The classes, imported when first used: the config checks (`difftune.data.options`) need
    neither torch nor Lightning (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
