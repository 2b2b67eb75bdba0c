"""Hub datasets larger than the disk, streamed: shuffled through a buffer, decoded as they arrive.

What streaming can promise: the held-out images are the stream's first `val_size` records (the
same every run), and each epoch's order comes from (seed, epoch) through a shuffle buffer, so a
run repeats. What it cannot: a resumed run gets its weights, optimizer and step back, but its
stream starts the epoch over instead of at the record it had reached (no random access).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from difftune.data.decode import Skipped, decode_image


class StreamedImages(torch.utils.data.IterableDataset):
    """The training records of a stream, shuffled per epoch, decoded on the fly; with a
    `label_column`, each comes with its class id: (image, id)."""

    def __init__(
        self,
        stream: Any,
        column: str,
        image_size: int,
        flip: bool,
        random_crop: bool,
        seed: int,
        buffer_size: int,
        label_column: str | None = None,
    ) -> None:
        super().__init__()
        self.stream, self.column, self.label_column = stream, column, label_column
        self.image_size, self.flip, self.random_crop = image_size, flip, random_crop
        self.seed, self.buffer_size = seed, buffer_size
        self.epoch = 0  # counts this copy's passes (persistent workers keep theirs)

    def __iter__(self) -> Iterator[torch.Tensor | Skipped | tuple[torch.Tensor | Skipped, int]]:
        stream = self.stream.shuffle(seed=self.seed, buffer_size=self.buffer_size)
        stream.set_epoch(self.epoch)
        torch.manual_seed(self.seed * 1_000_003 + self.epoch)  # flips and crops of this epoch
        self.epoch += 1
        for row in stream:
            value = row[self.column] or {}
            source = value.get("bytes") or value.get("path") or b""
            image = decode_image(source, self.image_size, self.flip, self.random_crop)
            yield image if self.label_column is None else (image, int(row[self.label_column]))


def stream_split(
    stream: Any,
    column: str,
    held_out: int,
    rank: int = 0,
    world_size: int = 1,
    label_column: str | None = None,
) -> tuple[Any, list[Any], list[int]]:
    """(this process's share of the training stream; the first `held_out` records, held out;
    their class ids, empty without a `label_column`)."""
    rows = list(stream.take(held_out))
    val = [row[column] or {} for row in rows]
    labels = [int(row[label_column]) for row in rows] if label_column else []
    train = stream.skip(held_out)
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        train = split_dataset_by_node(train, rank=rank, world_size=world_size)
    return train, [v.get("bytes") or v.get("path") or b"" for v in val], labels
