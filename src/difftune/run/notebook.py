"""`train(cfg)` called from Python (a notebook), not by `train.py`: what Hydra and the entry
point's boundary do for a command-line run, done for the call instead."""

import copy
import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from difftune.errors import DifftuneError
from difftune.run.build_errors import config_error, interpolation_error
from difftune.run.cli import user_error
from difftune.run.memory import memory_error
from difftune.run.provenance import record_outside_hydra

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's train.log format
LOGGERS = ("difftune", "lightning.pytorch")
RUN_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")  # seed_everything's


@contextmanager
def _run_log(run_dir: Path) -> Iterator[None]:
    """difftune's and Lightning's log lines to `<run>/train.log`, and difftune's to the console
    where nothing else prints them (no logging set up), for the run only."""
    file = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    file.setFormatter(logging.Formatter(LOG_FORMAT))
    added = [(logging.getLogger(name), file) for name in LOGGERS]
    if not logging.getLogger().handlers:
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        added.append((logging.getLogger("difftune"), console))
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for logger, handler in added:
        logger.addHandler(handler)
    logging.getLogger("difftune").setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, handler in added:
            logger.removeHandler(handler)
        file.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """The random generators (Python, NumPy, torch) and the environment variables that
    `seed_everything` and deterministic mode set, as they were before the run."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    env = {key: os.environ.get(key) for key in RUN_ENV}
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def as_python_call(cfg: DictConfig) -> Iterator[None]:
    """Outside a Hydra job: the run dir's record and train.log; the notebook's random state and
    environment back after the run; a value a library rejected is raised as its one-line
    `DifftuneError`; Ctrl-C (which Lightning turns into `exit(1)`) as a `KeyboardInterrupt` that
    says where to resume. Inside one, nothing: the entry point does it."""
    if HydraConfig.initialized():
        yield
        return
    given = copy.deepcopy(cfg)  # instantiate resolves nodes in place
    record_outside_hydra(cfg)
    with _run_log(Path(cfg.paths.output_dir)), _process_state_kept():
        try:
            yield
        except SystemExit as err:
            stop = err.__context__
            if not isinstance(stop, KeyboardInterrupt):
                raise
            where = getattr(stop, "resume_hint", "")
            stopped = KeyboardInterrupt(f"training stopped by Ctrl-C {where}".strip())
            stopped.resume_hint = where
            raise stopped from None
        except DifftuneError:
            raise
        except Exception as err:
            cause = (
                config_error(err, given)
                or user_error(err)
                or interpolation_error(err)
                or memory_error(err, given)
            )
            if cause is None:
                raise
            raise cause from None
