"""`ImageDataModule`: synthetic, Hugging Face or folder images as {"images", "skipped"} batches,
with "labels" (class ids) when `data.label_column` is set."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from difftune.data.decode import DecodedImageDataset, ImageSource, decode_image, make_collate
from difftune.data.folders import list_image_files
from difftune.data.labels import (
    Labelled,
    column_labels,
    folder_labels,
    stream_class_names,
)
from difftune.data.options import check_data_options, style_tuple
from difftune.data.resumable import EpochShuffle, ResumableDataLoader, SeededAugmentation
from difftune.data.sources import load_hf_records
from difftune.data.split import VAL_CAP, split_indices
from difftune.data.streaming import StreamedImages, stream_split
from difftune.data.synthetic import SyntheticStyleDataset
from difftune.data.workers import init_worker
from difftune.errors import DifftuneError

log = logging.getLogger(__name__)


class ImageDataModule(pl.LightningDataModule):
    """Training/validation images in [-1, 1] from synthetic scenes, a HF dataset or a folder,
    with their class ids when `label_column` is set (names: `class_names`)."""

    def __init__(
        self,
        source: str = "synthetic",
        dataset_name: str | None = None,
        data_dir: str | None = None,
        split: str = "train",
        subset: str | None = None,
        revision: str | None = None,
        image_column: str = "image",
        image_size: int = 32,
        batch_size: int = 16,
        num_workers: int = 0,
        val_size: int | None = None,
        flip: bool = True,
        random_crop: bool = False,
        seed: int = 0,
        style: str | Sequence[str] = "vintage",
        num_images: int = 512,
        max_images: int | None = None,
        persistent_workers: bool | None = None,
        pin_memory: bool | None = None,
        prefetch_factor: int | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        label_column: str | None = None,
    ) -> None:
        super().__init__()
        check_data_options(
            {"source": source, "dataset_name": dataset_name, "data_dir": data_dir,
             "batch_size": batch_size, "num_workers": num_workers, "val_size": val_size,
             "num_images": num_images, "seed": seed, "max_images": max_images,
             "shuffle_buffer": shuffle_buffer, "prefetch_factor": prefetch_factor,
             "streaming": streaming, "style": style, "label_column": label_column,
             "flip": flip, "persistent_workers": persistent_workers, "pin_memory": pin_memory}
        )  # fmt: skip
        styles = style_tuple(style)
        # a plain list in the hparams: a checkpoint holding a ListConfig fails weights_only loads
        style = style if isinstance(style, str) else list(styles)
        self.save_hyperparameters(logger=False)
        self.source, self.dataset_name, self.split = source, dataset_name, split
        self.subset, self.revision = subset, revision
        self.data_dir = str(Path(data_dir).expanduser()) if data_dir else None
        self.image_column, self.image_size, self.batch_size = image_column, image_size, batch_size
        self.num_workers, self.val_size, self.seed = num_workers, val_size, seed
        self.flip, self.random_crop, self.styles = flip, random_crop, styles
        self.num_images, self.max_images = num_images, max_images
        self.streaming, self.shuffle_buffer = streaming, shuffle_buffer
        self.label_column = label_column
        self.persistent_workers = num_workers > 0 and persistent_workers is not False
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None  # batches per worker
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self._records: Sequence[ImageSource] | None = None
        self._stream = None  # streaming: the IterableDataset, opened once
        self._labels: list[int] | None = None  # hf and imagefolder: one class id per record
        self._class_names: list[str] | None = None

    def prepare_data(self) -> None:
        """Download (hub datasets) once per node, before `setup`; a stream downloads nothing."""
        if self.source == "hf" and not self.streaming:
            self._load_records()

    def _load_records(self) -> Sequence[ImageSource]:
        """The undecoded images of an hf or imagefolder source (fails early when there are none),
        and their class ids and names when `label_column` is set."""
        if self._records is not None:
            return self._records
        if self.source == "hf":
            records = load_hf_records(
                self.dataset_name, self.split, self.image_column, self.subset, self.revision,
                label_column=self.label_column,
            )  # fmt: skip
            if self.label_column is not None:
                labelled = column_labels(records.dataset, self.label_column, self.dataset_name)
                self._labels, self._class_names = labelled
        else:
            records = list_image_files(self.data_dir)  # not empty: checked in __init__
            if self.label_column is not None:
                self._labels, self._class_names = folder_labels(self.data_dir, records)
        self._records = records
        return records

    @property
    def class_names(self) -> list[str] | None:
        """The class names (id i is `class_names[i]`), None without `label_column`; known before
        `setup` (a hub dataset is loaded for it, once)."""
        return None if self.label_column is None else list(self._load_class_names())

    def _load_class_names(self) -> list[str]:
        """The class names of the labelled source (cached; a stream reads only its features)."""
        if self._class_names is None:
            if self.source == "synthetic":
                self._class_names = list(self.styles)
            elif self.streaming:
                self._class_names = stream_class_names(
                    self._open_stream().features, self.label_column, self.dataset_name
                )
            else:
                self._load_records()
        return self._class_names

    def _open_stream(self) -> Any:
        """The streamed hub dataset (its metadata read once, for the class names and the data)."""
        if self._stream is None:
            self._stream = load_hf_records(
                self.dataset_name, self.split, self.image_column, self.subset, self.revision,
                streaming=True, label_column=self.label_column,
            )  # fmt: skip
        return self._stream

    def _labelled(self, dataset: Dataset, labels: Sequence[int]) -> Dataset:
        """`dataset` with its class ids, when labels are asked for."""
        return dataset if self.label_column is None else Labelled(dataset, labels)

    def _check_decodable(
        self, records: Sequence[ImageSource], train_idx: list[int], held: int
    ) -> None:
        """Decode the training images in order until the first success; raise if none of them
        is decodable (the held-out ones do not count: nothing would be trained)."""
        reasons: Counter[str] = Counter()
        for i in train_idx:
            item = decode_image(records[i], self.image_size)
            if isinstance(item, torch.Tensor):
                return
            reasons[item.reason] += 1
        key, where = (
            ("data.dataset_name", self.dataset_name)
            if self.source == "hf"
            else ("data.data_dir", self.data_dir)
        )
        found = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        also = f"; {held} more held out for validation (data.val_size)" if held else ""
        raise DifftuneError(
            f"{key}={where}: no decodable image ({len(train_idx)} training images tried: "
            f"{found}{also})"
        )

    def _check_held_out(self, records: Sequence[ImageSource], val_idx: list[int]) -> None:
        """A warning when no held-out image decodes: there would be no `val/loss` at all."""
        if val_idx and not any(
            isinstance(decode_image(records[i], self.image_size), torch.Tensor) for i in val_idx
        ):
            warnings.warn(
                f"data.val_size={'null' if self.val_size is None else self.val_size}: none of "
                f"the {len(val_idx)} held-out images decodes, so val/loss is not measured; "
                "see skipped_images.txt",
                stacklevel=3,
            )

    def check_source(self) -> None:
        """An image folder holds image files and a decodable training image: checked before the
        model loads (`setup` checks it again, at no cost: the listing is kept)."""
        if self.source != "imagefolder":
            return  # a hub dataset is downloaded by `prepare_data`, on one rank
        records = self._load_records()
        n = min(len(records), self.max_images or len(records))
        with warnings.catch_warnings():  # `setup` says what the split holds out, once
            warnings.simplefilter("ignore")
            train_idx, val_idx = split_indices(n, self.val_size, self.seed)
        self._check_decodable(records, train_idx, len(val_idx))

    def setup(self, stage: str | None = None) -> None:
        """Build the train/val datasets (idempotent)."""
        if self.train_dataset is not None:
            return
        if self.streaming:
            return self._setup_stream()
        if self.source == "synthetic":
            n = min(self.num_images, self.max_images or self.num_images)
            size, styles, seed = self.image_size, self.styles, self.seed
            train_base = SyntheticStyleDataset(n, size, styles, seed, self.flip)
            val_base = SyntheticStyleDataset(n, size, styles, seed)
            labels = [train_base.label(i) for i in range(n)]
        else:
            records = self._load_records()
            n = min(len(records), self.max_images or len(records))
            train_base = DecodedImageDataset(records, self.image_size, self.flip, self.random_crop)
            val_base = DecodedImageDataset(records, self.image_size)
            labels = self._labels
        train_idx, val_idx = split_indices(n, self.val_size, self.seed)
        if self.source != "synthetic":
            self._check_decodable(records, train_idx, len(val_idx))
            self._check_held_out(records, val_idx)
        self.train_dataset = Subset(self._labelled(train_base, labels), train_idx)
        self.val_dataset = Subset(self._labelled(val_base, labels), val_idx)
        log.info(
            "data %s: %d images, %d train / %d validation (data.val_size=%s)",
            self.source, n, len(train_idx), len(val_idx), self.val_size,
        )  # fmt: skip

    def _setup_stream(self) -> None:
        """A streamed dataset: its first `val_size` (default 64) records are held out."""
        held = VAL_CAP if self.val_size is None else self.val_size
        rank, world = self._rank_and_world()
        if self.label_column is not None:
            self._load_class_names()  # a label column that is no ClassLabel fails here, first
        stream, val_records, val_labels = stream_split(
            self._open_stream(), self.image_column, held, rank, world, self.label_column
        )
        self.train_dataset = StreamedImages(
            stream, self.image_column, self.image_size, self.flip, self.random_crop, self.seed,
            self.shuffle_buffer, self.label_column,
        )  # fmt: skip
        val = DecodedImageDataset(val_records, self.image_size)
        self.val_dataset = self._labelled(val, val_labels)
        log.info(
            "data hf (streamed): the first %d images held out for validation, the rest streamed "
            "through a shuffle buffer of %d", len(val_records), self.shuffle_buffer,
        )  # fmt: skip

    @property
    def num_train(self) -> int:
        """Number of training images (before any skips); sets the module up if needed."""
        self.setup()
        return len(self.train_dataset)

    @property
    def num_val(self) -> int:
        """Number of held-out validation images; sets the module up if needed."""
        self.setup()
        return len(self.val_dataset)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """{"images", "skipped"} (+ "labels") batches; shuffled ones resume mid-epoch exactly."""
        sampler = None
        rank, world = self._rank_and_world()
        if shuffle:
            dataset = SeededAugmentation(dataset, self.seed)
            sampler = EpochShuffle(
                len(dataset), self.seed, self.batch_size, self._batches_done, rank, world
            )
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=make_collate(self.image_size, self.label_column is not None),
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor,
            drop_last=False,
            worker_init_fn=partial(init_worker, rank=rank),
        )

    def _rank_and_world(self) -> tuple[int, int]:
        """This process's rank and the world size (0, 1 without a trainer)."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _batches_done(self) -> int | None:
        """Training batches this process has drawn (restored on resume); None without a trainer."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.total.ready

    def train_dataloader(self) -> DataLoader:
        """Shuffled (reproducibly, by `seed`) training batches with flips/crops as configured."""
        self.setup()
        if self.streaming:  # the stream shuffles itself; persistent workers keep their epochs
            return DataLoader(
                self.train_dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                collate_fn=make_collate(self.image_size, self.label_column is not None),
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
                worker_init_fn=partial(init_worker, rank=self._rank_and_world()[0]),
            )  # fmt: skip
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Unshuffled, unflipped, centre-cropped validation batches."""
        self.setup()
        return self._loader(self.val_dataset, shuffle=False)
