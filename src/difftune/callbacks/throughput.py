"""Images per second and peak memory, logged every N optimizer steps."""

import resource
import sys
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from difftune.errors import require_int


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or this process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# Not Lightning's ThroughputMonitor: its clock runs on through the sample grids and KID of the
# callbacks after it (test_lightnings_throughput_monitor_counts_the_grids_so_throughput_is_ours)
class Throughput(Callback):
    """Logs `perf/images_per_s` (training images, all processes) and `perf/peak_memory_mb`.

    Only the training steps count: the clock runs from each batch's start to this callback's
    `on_train_batch_end`, which runs before the grids, curves and metrics of the callbacks listed
    after it (conf/callbacks/default.yaml lists it first); validation runs after it too. Under
    DDP the images/s of rank 0 times the world size (the ranks step in lock-step); the peak memory
    is rank 0's.
    """

    #: what it logs (run/objective.py checks an `objective=` against these before training)
    METRICS = ("perf/images_per_s", "perf/peak_memory_mb")

    def __init__(self, every_n_steps: int = 10) -> None:
        require_int("callbacks.throughput.every_n_steps", every_n_steps, 1)
        self.every_n_steps = every_n_steps
        self._images = 0
        self._seconds = 0.0  # in training steps since the last log
        self._batch_start = 0.0
        self._logged_step = -1

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._seconds += time.perf_counter() - self._batch_start
        self._images += batch["images"].shape[0]
        step = trainer.global_step
        if step % self.every_n_steps or step == self._logged_step:
            return
        self._logged_step = step
        metrics = {
            "perf/images_per_s": self._images * trainer.world_size / max(self._seconds, 1e-9),
            "perf/peak_memory_mb": peak_memory_mb(pl_module.device),
        }
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._images, self._seconds = 0, 0.0
