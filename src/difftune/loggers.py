"""Loggers: fail at start-up when one cannot start, and log the composed config without secrets."""

import netrc
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from difftune.errors import DifftuneError

SECRET_KEY = re.compile(r"token|api_?key|secret|password|credential", re.IGNORECASE)


def redact(value: Any) -> Any:
    """The config as plain containers, with every secret-looking key dropped."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def check_loggers(cfg: DictConfig) -> None:
    """One line, before anything heavy, for a logger that cannot start."""
    loggers = cfg.get("logger") or {}
    for name, node in loggers.items():
        save_dir = node.get("save_dir") if node else None
        if save_dir is not None:
            parent = next(p for p in [Path(save_dir), *Path(save_dir).parents] if p.exists())
            if not os.access(parent, os.W_OK):
                raise DifftuneError(
                    f"logger.{name}.save_dir={save_dir} is not writable; "
                    "choose another paths.output_dir or use logger=csv"
                )
    wandb = loggers.get("wandb")
    offline = os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun")
    if wandb and not wandb.get("offline") and not offline and not wandb_logged_in():
        raise DifftuneError(
            "logger=wandb is online but no W&B login was found: run `wandb login` (or set "
            "WANDB_API_KEY), or use logger.wandb.offline=true, or logger=csv"
        )


def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """Send the resolved config, secrets removed, to every logger."""
    config = redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    for logger in loggers:
        logger.log_hyperparams(config)
