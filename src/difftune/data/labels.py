"""Class labels per image (`data.label_column`): ids 0..n-1 in the order of the class names.

A folder's classes are its first-level sub-folders; a HF dataset's are a column's (a ClassLabel
keeps its names and ids, strings and integers map their sorted unique values to 0..n-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from difftune.errors import DifftuneError


class Labelled(Dataset):
    """`dataset[i]` with its class id: `(item, labels[i])` (picklable: works with workers)."""

    def __init__(self, dataset: Dataset, labels: Sequence[int]) -> None:
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        """Number of items."""
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """The item (a tensor or a `Skipped`) and its class id."""
        return self.dataset[index], int(self.labels[index])


def folder_labels(data_dir: str, files: Sequence[str]) -> tuple[list[int], list[str]]:
    """Each image's class is its first-level sub-folder of `data_dir`: (ids, sorted names);
    `folders.class_folders` checked the layout when the module was made."""
    parts = [Path(f).relative_to(data_dir).parts for f in files]
    names = sorted({p[0] for p in parts})
    ids = {name: i for i, name in enumerate(names)}
    return [ids[p[0]] for p in parts], names


def column_labels(ds: Any, column: str, dataset_name: str) -> tuple[list[int], list[str]]:
    """The class ids and names of column `column` of a `datasets.Dataset` (no image decoded)."""
    import datasets

    feature = ds.features[column]
    values = ds.select_columns([column])[column][:]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        bad = [v for v in values if not 0 <= v < len(names)]
        if bad:
            raise DifftuneError(
                f"data.label_column={column!r} of {dataset_name}: {len(bad)} rows have no class "
                f"(id {bad[0]}); valid ids are 0..{len(names) - 1} ({', '.join(names)})"
            )
        return values, names
    kinds = {type(v) for v in values}
    if kinds not in ({str}, {int}):
        raise DifftuneError(
            f"data.label_column={column!r} of {dataset_name} holds {feature}: a label column "
            "is a ClassLabel, string or integer column without missing values"
        )
    unique = sorted(set(values))
    ids = {value: i for i, value in enumerate(unique)}
    return [ids[v] for v in values], [str(v) for v in unique]


def stream_class_names(features: Any, column: str, dataset_name: str) -> list[str]:
    """The names of a streamed dataset's ClassLabel column `column` (from its features)."""
    import datasets

    feature = (features or {}).get(column)
    if not isinstance(feature, datasets.ClassLabel):
        raise DifftuneError(
            f"data.label_column={column!r} of {dataset_name} is {feature}, not a ClassLabel: "
            "streaming needs a ClassLabel column (its names are in the features), or drop "
            "data.streaming"
        )
    return list(feature.names)
