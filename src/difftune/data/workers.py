"""What each data-loading worker process does first."""

import os
import signal

from lightning.fabric.utilities.seed import pl_worker_init_function


def init_worker(worker_id: int, rank: int = 0) -> None:
    """Leave SIGTERM to the training process, and seed as Lightning would.

    A cluster's stop (SLURM's preemption or time limit, `scancel`, `timeout`) signals every
    process of the job. A worker killed by it fails the next fetch, so the run crashed without
    saving last.ckpt. Ignoring it here lets the training process finish its step, save and stop
    its workers. Lightning adds its own `pl_worker_init_function` only to a loader that has no
    `worker_init_fn`, so it is called here under the same condition (`seed_everything(...,
    workers=True)`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank=rank)
