"""The training order: each rank's share of an epoch, and where a resumed run picks it up."""

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from difftune.data.resumable import EpochShuffle


def whole_epochs(n: int, batch_size: int, rank: int, world: int, epochs: int) -> list[int]:
    """What an uninterrupted run of this rank draws, epoch after epoch."""
    order = []
    for epoch in range(epochs):
        sampler = EpochShuffle(n, 7, batch_size, rank=rank, world=world)
        sampler.set_epoch(epoch)
        order += list(sampler)
    return order


@pytest.mark.parametrize("n", [10, 11, 3])  # even; odd (rank 1 repeats the first index); tiny
def test_the_ranks_split_each_epoch_as_torchs_distributed_sampler_over_the_permutation(n):
    world = 2
    for epoch in range(3):
        one = EpochShuffle(n, 7, 2)
        one.set_epoch(epoch)
        permutation = list(one)  # one process's order: a permutation of epoch·n + 0..n-1
        assert sorted(permutation) == [epoch * n + j for j in range(n)]
        shares = []
        for rank in range(world):
            sampler = EpochShuffle(n, 7, 2, rank=rank, world=world)
            sampler.set_epoch(epoch)
            torchs = DistributedSampler(permutation, world, rank, shuffle=False)
            shares.append(list(sampler))
            assert shares[-1] == [permutation[i] for i in torchs]  # Lightning's split before
            assert len(sampler) == len(shares[-1]) == math.ceil(n / world)
        assert set(shares[0]) | set(shares[1]) == set(permutation)  # every image, each epoch


@pytest.mark.parametrize("world", [1, 2])
def test_a_resumed_rank_draws_what_the_uninterrupted_one_drew_from_that_batch_on(world):
    n, batch_size = 13, 3  # per rank: 7 (padded) or 13 indices, 3 or 5 batches per epoch
    for rank in range(world):
        whole = whole_epochs(n, batch_size, rank, world, epochs=3)
        share = math.ceil(n / world)
        per_epoch = math.ceil(share / batch_size)  # the last batch of an epoch is short
        for done in range(3 * per_epoch):  # resumed after `done` batches, mid-epoch included
            sampler = EpochShuffle(n, 7, batch_size, lambda d=done: d, rank=rank, world=world)
            epoch, offset = divmod(done, per_epoch)
            start = epoch * share + offset * batch_size
            assert list(sampler) == whole[start : (epoch + 1) * share], (rank, done)


def test_lightning_takes_it_as_a_distributed_sampler_and_leaves_it_unwrapped():
    sampler = EpochShuffle(10, 0, 2, rank=1, world=2)
    assert isinstance(sampler, DistributedSampler)
    assert (sampler.num_replicas, sampler.rank, sampler.num_samples) == (2, 1, 5)
    assert torch.utils.data.DataLoader(range(10), sampler=sampler, batch_size=2).sampler is sampler
