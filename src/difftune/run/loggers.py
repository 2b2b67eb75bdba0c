"""Loggers: fail at start-up when one cannot start, and log the composed config without secrets."""

import netrc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from difftune.errors import DifftuneError
from difftune.run.disk import check_writable
from difftune.run.redaction import redact, redact_text


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _inside(path: Path, run_dir: str | None) -> bool:
    """`path` is the run dir or under it (whose own check names paths.output_dir)."""
    return run_dir is not None and path.absolute().is_relative_to(Path(run_dir).absolute())


def check_loggers(cfg: DictConfig) -> None:
    """One line, before anything heavy, for a logger that cannot start."""
    loggers = cfg.get("logger") or {}
    for name, node in loggers.items():
        save_dir = node.get("save_dir") if node else None
        if save_dir is not None and not _inside(Path(save_dir), cfg.paths.get("output_dir")):
            check_writable(f"logger.{name}.save_dir", save_dir, Path(save_dir))
    wandb = loggers.get("wandb")
    offline = os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun")
    if wandb and not wandb.get("offline") and not offline and not wandb_logged_in():
        raise DifftuneError(
            "logger=wandb is online but no W&B login was found: run `wandb login` (or set "
            "WANDB_API_KEY), or use logger.wandb.offline=true, or logger=csv"
        )


@contextmanager
def redacted_argv() -> Iterator[None]:
    """`sys.argv` without secrets while loggers start (W&B records the command line then)."""
    argv = list(sys.argv)
    sys.argv[:] = [redact_text(arg) for arg in argv]
    try:
        yield
    finally:
        sys.argv[:] = argv


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """Start every logger and send it the resolved config, secrets removed."""
    config = redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    with redacted_argv():
        for logger in loggers:
            logger.log_hyperparams(config)


@contextmanager
def finished_runs(trainer: Trainer) -> Iterator[None]:
    """End the W&B run of each of the trainer's loggers when the fit ends, failed (exit code 1)
    or not. Lightning leaves it open, so the next `train(cfg)` in the process (a notebook's, or
    the next job of a `-m` sweep) would log into it."""
    failed = True
    try:
        yield
        failed = False
    finally:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                logger.experiment.finish(exit_code=1 if failed else 0)
