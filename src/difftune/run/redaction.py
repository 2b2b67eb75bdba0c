"""Secrets never reach a file: secret-looking keys and token-looking values are written as `***`.

One rule serves every writer: `redact` for configs (`config_resolved.yaml`, loggers' hparams),
`redact_text` for command lines, overrides and log lines (`run_info.json`, sweep summaries,
`RedactFilter`), and the Hydra callback `RedactSecrets`, which rewrites the `.hydra/*.yaml` (and
the sweep's `multirun.yaml`) that Hydra writes before the job starts, and says to pass secrets in
the environment instead.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

STARS = "***"
SECRET_KEY = re.compile(r"token|api_?key|secret|passw(or)?d|credential", re.IGNORECASE)
# a Hugging Face token anywhere; a W&B key (40 hex digits) as a whole value, not inside a path
TOKEN = re.compile(
    r"(?<![\w-])hf_[A-Za-z0-9]{8,}|(?:^|(?<=[=\s'\",:\[]))[0-9a-f]{40}(?=$|[\s'\",\]])"
)
SECRET_ASSIGNMENT = re.compile(
    r"(?P<key>[\w.+~/@-]*(?:token|api_?key|secret|passw(?:or)?d|credential)[\w.@-]*)"
    r"=(?:'[^']*'|\"[^\"]*\"|[^\s,\]]*)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """`text` with `secret_key=value` pairs and token-looking words replaced by `***`."""
    text = SECRET_ASSIGNMENT.sub(lambda m: f"{m.group('key')}={STARS}", text)
    return TOKEN.sub(STARS, text)


def redact(value: Any) -> Any:
    """Plain containers with the values of secret-looking keys and token-looking text as `***`."""
    if isinstance(value, dict):
        return {
            k: STARS if SECRET_KEY.search(str(k)) and v is not None else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def secret_keys(value: Any, prefix: str = "") -> list[str]:
    """The dotted keys of `value` that `redact` would change."""
    if isinstance(value, dict):
        found = []
        for k, v in value.items():
            key = f"{prefix}{k}"
            if SECRET_KEY.search(str(k)) and v is not None:
                found.append(key)
            else:
                found += secret_keys(v, f"{key}.")
        return found
    if isinstance(value, list):
        return [k for i, v in enumerate(value) for k in secret_keys(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(value, str) and redact_text(value) != value else []


def redact_file(path: Path) -> bool:
    """Rewrite a YAML file that Hydra wrote with its secrets as `***`; whether it changed."""
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    clean = redact(data)
    if clean == data:
        return False
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    OmegaConf.save(OmegaConf.create(clean), tmp)
    tmp.replace(path)
    return True


class RedactFilter(logging.Filter):
    """Logging filter (`hydra.hydra_logging`, `hydra.job_logging`): log lines without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class RedactSecrets(Callback):
    """Hydra callback (`hydra.callbacks`): the job's `.hydra/*.yaml` without secrets."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = config.hydra
        paths = []
        if hydra_cfg.output_subdir is not None:
            subdir = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
            paths += [subdir / f"{name}.yaml" for name in ("config", "hydra", "overrides")]
        if hydra_cfg.mode == RunMode.MULTIRUN:
            paths.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
        for path in paths:
            if path.is_file():
                redact_file(path)
        task = OmegaConf.to_container(config, resolve=False)
        task.pop("hydra", None)
        keys = secret_keys(task) + [
            o.split("=", 1)[0] for o in hydra_cfg.overrides.task if redact_text(o) != o
        ]
        if keys:
            log.warning(
                "%s: secrets on the command line or in the config are written as %s; pass them "
                "in the environment instead (HF_TOKEN, WANDB_API_KEY)",
                ", ".join(dict.fromkeys(k.lstrip("+~") for k in keys)),
                STARS,
            )
