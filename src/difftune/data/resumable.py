"""Data order and augmentation that a checkpoint restores exactly, mid-epoch included.

Epoch e's order is a permutation drawn from (seed, e) alone, and item j's flips/crops in epoch e
come from a generator seeded by (seed, e, j). Where the run stands is read from the trainer's
batch counter, which Lightning restores from the checkpoint: a resumed run draws exactly the
batches the uninterrupted run drew from that point on, with any number of workers. (Lightning's
own answer, a stateful loader, counts the batch its prefetcher already took, and its epoch
counter is one ahead after a checkpoint from an epoch's last step.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

from difftune.seeds import mix_seed


class EpochShuffle(DistributedSampler):
    """Epoch e: a permutation of `n` from (seed, e), yielded as `e·n + index` from the batch the
    run has reached (`batches_done()`, the trainer's restored count; None: from `set_epoch`).

    The epoch rides along in the index so that `SeededAugmentation` can seed per epoch. Under
    DDP (`world` > 1) rank r takes every world-th index from r of the permutation padded by its
    first ones, the split of torch's `DistributedSampler` (which this is, so Lightning does not
    wrap it in its own), so each rank resumes its own share mid-epoch exactly too.
    """

    def __init__(
        self, n: int, seed: int, batch_size: int, batches_done: Callable[[], int | None] = None,
        rank: int = 0, world: int = 1,
    ) -> None:  # fmt: skip
        # not DistributedSampler.__init__, which asks torch.distributed for the world size
        self.n, self.seed, self.batch_size, self.epoch = n, seed, batch_size, 0
        self.batches_done = batches_done or (lambda: None)
        self.rank, self.num_replicas = rank, world
        self.num_samples = math.ceil(n / world)
        self.total_size = self.num_samples * world
        self.shuffle, self.drop_last = True, False

    def set_epoch(self, epoch: int) -> None:
        """Lightning's epoch; used only where the batch count is not known (no trainer)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        done = self.batches_done()
        if done is None:
            epoch, offset = self.epoch, 0
        else:
            epoch, offset = divmod(done, math.ceil(self.num_samples / self.batch_size))
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = torch.randperm(self.n, generator=generator) + epoch * self.n
        padded = order.repeat(math.ceil(self.total_size / self.n))[: self.total_size]
        mine = padded[self.rank :: self.num_replicas]
        return iter(mine[offset * self.batch_size :].tolist())


class SeededAugmentation(Dataset):
    """Item `epoch·n + j` is `dataset[j]` with torch's RNG seeded by (seed, epoch, j) meanwhile.

    The global RNG is restored afterwards (`fork_rng`), so nothing else sees the seeding.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        epoch, j = divmod(int(index), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, j))
            return self.dataset[j]


class ResumableDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose position lives in the trainer's loop state (see `EpochShuffle`).

    `state_dict`/`load_state_dict` only tell Lightning that it resumes exactly; they hold nothing.
    """

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass
