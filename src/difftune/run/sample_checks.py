"""The values of a `sample.py` config that need no torch or diffusers: checked by the preflight
of every job of a command line (a typo answers in about a second), and by `sample_images`."""

import math
from typing import Any

from omegaconf import DictConfig

from difftune.core.conditioning import class_label_id, class_names_of
from difftune.core.options import check_step_count
from difftune.errors import DifftuneError, require_int
from difftune.guidance.options import check_guidance_config
from difftune.hub.pipelines import load_scheduler_config, load_unet_config
from difftune.run.checks import check_device, check_image_size, check_seed

PLOTS = ("schedules",)
PRECISIONS = ("32", "bf16")


def check_sample_config(cfg: DictConfig) -> None:
    """The keys only `sample.py` has, and the guidance preset's (a `_target_` of the user's own
    checks its own); the scheduler checks the step count against its own limit."""
    for key in ("num_images", "batch_size", "progression_every", "num_inference_steps"):
        require_int(key, cfg.get(key), 1)
    if cfg.get("plot") not in (None, *PLOTS):
        raise DifftuneError(f"plot={cfg.plot!r} is not one of {', '.join(PLOTS)} (or null)")
    check_device(cfg.device)
    check_seed(cfg.get("seed"))
    precision = str(cfg.get("precision", "32"))
    if precision not in PRECISIONS:
        raise DifftuneError(f"precision={precision}: expected one of {', '.join(PRECISIONS)}")
    if not isinstance(cfg.get("compile", False), bool):
        raise DifftuneError(f"compile={cfg.compile}: expected true or false")
    check_guidance_config(cfg.get("guidance"))


def sampled_unet_config(cfg: DictConfig) -> tuple[dict[str, Any], int]:
    """`pretrained`'s UNet config (`unet/config.json` alone, no weights) and the image size to
    sample (`image_size`, else the UNet's), checked against it; the step count against its
    scheduler's config."""
    schedule = load_scheduler_config(cfg.pretrained, key="pretrained")
    target = str(cfg.scheduler.get("_target_", ""))  # diffusers.DDIMScheduler.from_config
    name = next((part for part in target.split(".") if part.endswith("Scheduler")), target)
    check_step_count(cfg.num_inference_steps, schedule.get("num_train_timesteps", 1000), name)
    unet_config = load_unet_config(cfg.pretrained, key="pretrained")
    size = cfg.image_size or unet_config["sample_size"]
    check_image_size(size, unet_config, key="image_size")
    return unet_config, size


def class_rows(cfg: DictConfig, unet_config: dict[str, Any]) -> list[int] | None:
    """The class ids to sample, one grid row each (None: an unconditional pipeline), from
    `class_label` and `cfg_scale` checked against `unet/config.json` alone (no weights)."""
    w = cfg.get("cfg_scale")
    if w is not None and not (
        isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
    ):
        raise DifftuneError(
            f"cfg_scale={w} must be a finite number (3 is usual, 1 is plain conditional "
            "sampling) or null (no classifier-free guidance)"
        )
    names = class_names_of(unet_config)
    if names is None:
        for key in ("class_label", "cfg_scale"):
            if cfg.get(key) is not None:
                raise DifftuneError(
                    f"{key}={cfg.get(key)}: pretrained={cfg.pretrained} has no classes (an "
                    f"unconditional pipeline); valid: {key}=null, or a pipeline fine-tuned with "
                    "model.conditioning=class"
                )
        return None
    if cfg.get("class_label") is None:
        return list(range(len(names)))
    return [class_label_id(cfg.class_label, names, key="class_label")]
