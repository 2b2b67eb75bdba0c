"""Data-loading workers: a cluster's SIGTERM is the training process's to handle; seeds as
Lightning's."""

import os
import random
import signal
from functools import partial

import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, get_worker_info

from difftune.data import ImageDataModule
from difftune.data.workers import init_worker


class TermsItsWorker(Dataset):
    """Item 0 sends SIGTERM to the worker process loading it, as SLURM's stop signals every
    process of a job."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if i == 0 and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.base[i]


def test_a_sigterm_to_a_data_worker_leaves_its_batches_to_come():
    """The training process stops after its step and saves; a worker killed by the signal
    failed the next fetch instead (`DataLoader worker ... is killed by signal: Terminated`)."""
    dm = ImageDataModule(num_images=8, image_size=8, batch_size=4, num_workers=1, val_size=0)
    dm.setup()
    dm.train_dataset = TermsItsWorker(dm.train_dataset)
    assert [len(batch["images"]) for batch in dm.train_dataloader()] == [4, 4]


class Draws(Dataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([random.random(), np.random.rand(), torch.rand(()).item()])


def worker_draws(init) -> torch.Tensor:
    torch.manual_seed(0)  # the loader's base seed
    return torch.cat(list(DataLoader(Draws(), num_workers=1, worker_init_fn=init)))


def test_workers_draw_what_lightnings_own_worker_seeding_gives(monkeypatch):
    monkeypatch.setenv("PL_SEED_WORKERS", "1")  # seed_everything(seed, workers=True)
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    ours = worker_draws(partial(init_worker, rank=1))
    assert torch.equal(ours, worker_draws(partial(pl_worker_init_function, rank=1)))
    assert not torch.equal(ours, worker_draws(partial(init_worker, rank=0)))  # per rank
