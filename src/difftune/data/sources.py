"""Where a hub dataset's images come from: the undecoded image column of a HF dataset."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difftune.data.decode import ImageSource
from difftune.errors import DifftuneError

log = logging.getLogger(__name__)

_OFFLINE_HINT = (
    "to work offline use data=imagefolder data.data_dir=DIR, or data=synthetic, "
    "or HF_DATASETS_OFFLINE=1 with the dataset already in the HF cache"
)


def _one_line(text: str, limit: int = 240) -> str:
    """Collapse whitespace/newlines and shorten, so a library's message fits one error line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HFImageRecords(Sequence):
    """The undecoded image column of a `datasets.Dataset`: each item is the bytes or the path."""

    def __init__(self, dataset: object, column: str) -> None:
        self.dataset = dataset
        self.column = column

    def __len__(self) -> int:
        """Number of rows."""
        return len(self.dataset)

    def __getitem__(self, index: int) -> ImageSource:
        """Encoded bytes of row `index` (or its file path when the bytes are not stored)."""
        value = self.dataset[index][self.column] or {}
        return value.get("bytes") or value.get("path") or b""


def _image_column(
    ds: Any, dataset_name: str, image_column: str, label_column: str | None = None
) -> Any:
    """`ds` with only its image column, left undecoded (and the label column, if asked); one
    line when there is no such column."""
    import datasets

    columns = list(ds.column_names or [])
    for key, column in (("image_column", image_column), ("label_column", label_column)):
        if column is not None and column not in columns:
            raise DifftuneError(
                f"data.{key}={column!r} is not one of {', '.join(columns)} "
                f"(columns of {dataset_name})"
            )
    kept = [image_column] + ([label_column] if label_column not in (None, image_column) else [])
    try:
        return ds.select_columns(kept).cast_column(image_column, datasets.Image(decode=False))
    except Exception as exc:
        raise DifftuneError(
            f"data.image_column={image_column!r} of {dataset_name} is not an image column: "
            f"{_one_line(str(exc))}"
        ) from exc


def _load(
    dataset_name: str, split: str, subset: str | None, revision: str | None, streaming: bool
) -> Any:
    """`datasets` loads a hub dataset, a local hub-style folder or a `save_to_disk` dir."""
    import datasets  # slow import, only needed for this source

    try:
        path = Path(dataset_name).expanduser()
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            if streaming:
                raise DifftuneError(
                    f"data.streaming=true: {dataset_name} is a save_to_disk dir, already on "
                    "disk; drop data.streaming"
                )
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DifftuneError(
                        f"data.split={split!r} is not one of {', '.join(ds)} in {dataset_name}"
                    )
                ds = ds[split]
            return ds
        return datasets.load_dataset(
            dataset_name, subset, split=split, revision=revision, streaming=streaming
        )
    except DifftuneError:
        raise
    except Exception as exc:
        raise DifftuneError(
            f"could not load data.dataset_name={dataset_name!r} (data.subset={subset!r}, "
            f"data.split={split!r}, data.revision={revision!r}): "
            f"{type(exc).__name__}: {_one_line(str(exc))}; {_OFFLINE_HINT}"
        ) from exc


def load_hf_records(
    dataset_name: str,
    split: str,
    image_column: str,
    subset: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    label_column: str | None = None,
) -> Any:
    """A hub dataset (its `subset` config at `revision`), a local hub-style folder or a
    `save_to_disk` dir, without decoding: `HFImageRecords`, or with `streaming` the
    `datasets.IterableDataset` of its image column (nothing downloaded first); `label_column`
    is kept beside the images (`HFImageRecords.dataset` holds both)."""
    ds = _image_column(_load(dataset_name, split, subset, revision, streaming), dataset_name,
                       image_column, label_column)  # fmt: skip
    return ds if streaming else HFImageRecords(ds, image_column)
