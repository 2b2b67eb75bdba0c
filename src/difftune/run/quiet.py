"""Silence third-party messages that are not the user's business, each by its module and text.

Only the messages listed here are dropped; every other warning and log line still shows.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, category, module regex) of `warnings.filterwarnings`
WARNINGS: list[tuple[str, type[Warning], str]] = [
    # Lightning's own pytree helper on torch >= 2.10; nothing a user can change
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\."),
]

# logger name: message prefixes dropped from it
LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    # advertising tips (litlogger, litmodels)
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip:",),
    # said on save by Lightning's own SLURM checkpoint (difftune's saves pass weights_only)
    "lightning.pytorch.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
}


# logger name: (message prefix, what it must contain, replacement or None to drop), for a message
# that is wrong where difftune calls: diffusers says "unsafe" and logs an error for a pipeline
# without safetensors, then reads its .bin with torch.load(weights_only=True): tensors only
REWRITES: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "diffusers.models.modeling_utils": (
        ("An error occurred while trying to fetch", "diffusion_pytorch_model.safetensors", None),
        (
            "Defaulting to unsafe serialization",
            "",
            "no safetensors weights in this pipeline: its diffusion_pytorch_model.bin is read "
            "with torch.load(weights_only=True), which loads tensors only (no code runs)",
        ),
    ),
}


class _Rewrite(logging.Filter):
    """Drops a listed record, or replaces its text and makes it an INFO line."""

    def __init__(self, rules: tuple[tuple[str, str, str | None], ...]) -> None:
        super().__init__()
        self.rules = rules

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for prefix, contains, replacement in self.rules:
            if message.startswith(prefix) and contains in message:
                if replacement is None:
                    return False
                record.msg, record.args = replacement, ()
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class _DropPrefixes(logging.Filter):
    """Drops the records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def silence_third_party() -> None:
    """Install the filters above (idempotent); the entry points call it first."""
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, prefixes in LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
    for name, rules in REWRITES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Rewrite) for f in logger.filters):
            logger.addFilter(_Rewrite(rules))


def one_copy_of_lightning_logs() -> None:
    """Lightning gives its `lightning` logger a stderr handler on import; under Hydra the root
    logger already prints to the console and train.log, so drop it: each line shows once."""
    if not logging.getLogger().handlers:
        return  # a notebook or script without logging set up: Lightning's handler is the one
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        if type(handler) is logging.StreamHandler:
            lightning.removeHandler(handler)
