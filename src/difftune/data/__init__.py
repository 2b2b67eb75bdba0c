"""Training data: synthetic style scenes, Hugging Face datasets and image folders."""

from difftune.data.datamodule import ImageDataModule
from difftune.data.synthetic import SyntheticStyleDataset

__all__ = ["ImageDataModule", "SyntheticStyleDataset"]
