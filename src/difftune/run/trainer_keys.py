"""The Trainer's length, validation, logging, precision and clipping keys, and `resume`: one line
each, before the run.

Lightning checks some of them only once the fit runs (`max_epochs=abc` is an assertion there,
`val_check_interval=0` a division by zero), and takes others that make no run at all
(`max_epochs=0` exports the untrained model) or a wrong one (`gradient_clip_val=-1` multiplies
every gradient by a negative factor: the loss climbs).
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from omegaconf import DictConfig

from difftune.errors import DifftuneError, is_int_at_least, is_number

UNTRAINED = "would export the model untrained"
#: float32 weights: full precision or Lightning's autocast (its short names too)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16")
HALF_WEIGHTS = ("16-true", "bf16-true")


def _length(key: str, value: Any, unit: str) -> None:
    """`max_steps` / `max_epochs`: an integer >= 1, or -1 (no limit of this kind)."""
    if value is None and key == "trainer.max_epochs":
        return
    if value == 0 and is_int_at_least(value, 0):
        raise DifftuneError(f"{key}=0 {UNTRAINED}; use a number of {unit} >= 1 (or -1: no limit)")
    if not (is_int_at_least(value, 1) or value == -1 and is_int_at_least(value, -1)):
        raise DifftuneError(f"{key}={value!r} must be an integer >= 1, or -1 for no limit")


def _max_time(value: Any) -> None:
    """Not zero (a malformed duration is Lightning's one line, when it builds its Timer)."""
    parts = str(value).split(":")
    digits = isinstance(value, str) and len(parts) == 4 and all(p.isdigit() for p in parts)
    if digits and not any(int(p) for p in parts):
        raise DifftuneError(f"trainer.max_time={value} {UNTRAINED}; use e.g. 00:12:00:00")


def _precision(value: Any) -> None:
    """The weights stay float32: half-precision weights lose the updates of a fine-tune."""
    if str(value) in PRECISIONS and not isinstance(value, bool):
        return
    valid = "use 32-true, bf16-mixed or 16-mixed (autocast, float32 weights)"
    if str(value) in HALF_WEIGHTS:
        raise DifftuneError(
            f"trainer.precision={value}: half-precision weights round away AdamW's fine-tuning "
            f"updates (~1e-5 of a weight, below their resolution); {valid}"
        )
    raise DifftuneError(f"trainer.precision={value} is not supported; {valid}")


def _gradient_clip(value: Any) -> None:
    """None or a finite number >= 0 (Lightning takes a negative one and flips the gradients)."""
    if value is not None and not (is_number(value) and value >= 0):
        raise DifftuneError(
            f"trainer.gradient_clip_val={value!r} must be a number >= 0 (0 or null: no "
            "clipping; 1.0 is usual)"
        )


def check_trainer_keys(cfg: DictConfig) -> None:
    """The keys that decide how long a run trains, when it validates and logs, and whether it
    resumes: each a valid value, and together a run that trains at least one step."""
    trainer = cfg.trainer
    _length("trainer.max_steps", trainer.get("max_steps", -1), "steps")
    _length("trainer.max_epochs", trainer.get("max_epochs"), "epochs")
    _max_time(trainer.get("max_time"))
    _precision(trainer.get("precision", "32-true"))
    _gradient_clip(trainer.get("gradient_clip_val"))
    interval = trainer.get("val_check_interval")
    if not (
        interval is None
        or isinstance(interval, str)  # a duration: Lightning parses it, in one line
        or is_int_at_least(interval, 1)
        or isinstance(interval, float)
        and 0.0 < interval <= 1.0
    ):
        raise DifftuneError(
            f"trainer.val_check_interval={interval!r} must be a number of steps >= 1, or a "
            "share of an epoch in (0, 1]"
        )
    every_epochs = trainer.get("check_val_every_n_epoch", 1)
    if not (every_epochs is None or is_int_at_least(every_epochs, 1)):
        raise DifftuneError(
            f"trainer.check_val_every_n_epoch={every_epochs!r} must be an integer >= 1 or null"
        )
    log_every = trainer.get("log_every_n_steps", 50)
    if not is_int_at_least(log_every, 1):
        raise DifftuneError(f"trainer.log_every_n_steps={log_every!r} must be an integer >= 1")
    devices = trainer.get("devices", "auto")
    if isinstance(devices, Real) and not (is_int_at_least(devices, 1) or devices == -1):
        raise DifftuneError(
            f"trainer.devices={devices!r} must be a number of devices >= 1, -1 (all), auto, or "
            "a list of device ids"
        )
    resume = cfg.get("resume", False)
    if not isinstance(resume, bool):
        raise DifftuneError(f"resume={resume!r} must be true or false")
    schedule = cfg.model.get("lr_scheduler") or {}
    warmup = schedule.get("num_warmup_steps", 0)
    if not is_int_at_least(warmup, 0):
        raise DifftuneError(
            f"model.lr_scheduler.num_warmup_steps={warmup!r} must be an integer >= 0"
        )
    length = schedule.get("num_training_steps")  # cosine: ${trainer.max_steps}
    if length is not None and not (is_int_at_least(length, 1) or length == -1):
        raise DifftuneError(
            f"model.lr_scheduler.num_training_steps={length!r} must be an integer >= 1, or -1 "
            "(the run's length in optimizer steps, from trainer.max_epochs)"
        )
    if length == -1 and trainer.get("max_epochs") == -1:
        raise DifftuneError(
            "model.lr_scheduler.num_training_steps=-1 (trainer.max_steps=-1) with "
            "trainer.max_epochs=-1: the schedule decays over the run's length, and this run has "
            "none; set trainer.max_steps=N or trainer.max_epochs=N"
        )
