"""`sample_images(cfg)`, the `sample.py` job: load a pipeline, sample it, write grids and images."""

import contextlib
import copy
import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from difftune.core.conditioning import class_names_of
from difftune.core.sampling import sample, set_timesteps
from difftune.errors import DifftuneError
from difftune.guidance.guide import Guidance
from difftune.hub.pipelines import load_noise_scheduler, load_unet
from difftune.pictures.images import save_grid, save_panels, to_pil_list
from difftune.pictures.plots import plot_progression, plot_schedules
from difftune.run.sample_checks import check_sample_config, class_rows, sampled_unet_config
from difftune.seeds import mix_seed

log = logging.getLogger(__name__)

GRID_IMAGES = 64  # a grid shows at most this many images of each class row; images/ has all


def scaled(guidance: Guidance | None, fraction: float) -> Guidance | None:
    """A copy of `guidance` with its scale times `fraction` (None, and a per-image scale, which
    no batch changes, stay as they are)."""
    if guidance is None or fraction == 1 or guidance.per_image:
        return guidance
    share = copy.copy(guidance)
    share.scale = guidance.scale * fraction
    return share


def make_scheduler(cfg: DictConfig) -> Any:
    """The `scheduler` group's factory applied to the pipeline's own noise schedule, its steps set.

    `set_timesteps` checks `num_inference_steps` here (against the scheduler's own limit too),
    before any UNet loads.
    """
    noise_schedule = load_noise_scheduler(cfg.pretrained, key="pretrained").config
    scheduler = hydra.utils.instantiate(cfg.scheduler)(noise_schedule)
    set_timesteps(scheduler, cfg.num_inference_steps)
    return scheduler


def speed_settings(cfg: DictConfig, unet: torch.nn.Module, device: str) -> tuple[Any, Any]:
    """The UNet to call (torch.compile'd with `compile=true`) and the autocast context of
    `precision` (bf16: the UNet's matmuls and convolutions in bfloat16, the loop in float32)."""
    model = torch.compile(unet) if cfg.get("compile") else unet
    bf16 = str(cfg.get("precision", "32")) == "bf16"
    autocast = torch.autocast(device, torch.bfloat16) if bf16 else contextlib.nullcontext()
    return model, autocast


def start_noise(
    seed: int, count: int, shape: tuple[int, ...], batch_size: int
) -> Iterator[torch.Tensor]:
    """x_T of images 0..count-1 in batches, equal to slices of `torch.randn(count, *shape)` from
    `seed`, one batch in memory at a time (10000 images at 256 px are 7.9 GB of noise).

    Consecutive draws from one generator equal one draw where each batch holds a multiple of 16
    numbers (torch's CPU normal fills blocks of 16: every side a multiple of 4 gives that); other
    shapes are drawn whole, then sliced."""
    generator = torch.Generator().manual_seed(seed)
    if math.prod(shape) % 16:
        whole = torch.randn(count, *shape, generator=generator)
        yield from whole.split(batch_size)
        return
    for start in range(0, count, batch_size):
        yield torch.randn(min(batch_size, count - start), *shape, generator=generator)


def file_prefixes(names: list[str]) -> list[str]:
    """Each class's prefix in images/: its name with path separators and other odd characters
    as `_`, and its id in front where two names would give one prefix (`a b`, `a_b`; also in
    another case, for case-insensitive disks), so no class writes over another's images."""
    safe = [re.sub(r"[^\w.-]+", "_", name) for name in names]
    if len({prefix.casefold() for prefix in safe}) < len(safe):
        safe = [f"{i}_{prefix}" for i, prefix in enumerate(safe)]
    return safe


def sample_images(cfg: DictConfig, on_step: Callable[[dict], None] | None = None) -> Path:
    """Sample `cfg.pretrained` into `cfg.paths.output_dir`; returns the path of `grid.png`.

    `on_step` gets the first batch's step dicts (`i`, `t`, `x_t`, `x0`, on the CPU), every step
    (the demo page streams them).

    A conditional pipeline samples `class_label` (a name or an id), or with `class_label=null`
    every class from the same noises, one grid row per class; `cfg_scale` adds classifier-free
    guidance (Ho & Salimans 2022).
    """
    check_sample_config(cfg)
    out = Path(cfg.paths.output_dir)
    if cfg.get("plot") == "schedules":
        alphas_cumprod = load_noise_scheduler(cfg.pretrained, key="pretrained").alphas_cumprod
        path = plot_schedules(alphas_cumprod, out / "schedules.png")
        log.info("wrote %s", path)
        return path
    unet_config, size = sampled_unet_config(cfg)
    rows = class_rows(cfg, unet_config)
    cfg_scale = None if cfg.get("cfg_scale") is None else float(cfg.cfg_scale)
    scheduler = make_scheduler(cfg)
    guidance = hydra.utils.instantiate(cfg.get("guidance"))  # None for guidance=none
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    unet = load_unet(cfg.pretrained, key="pretrained").to(device).eval().requires_grad_(False)
    model, autocast = speed_settings(cfg, unet, device)

    shape = (unet.config.in_channels, size, size)
    progression: list[dict] = []
    num_batches = -(-cfg.num_images // cfg.batch_size) * len(rows or [None])
    bar = tqdm(  # disable=None: no bar frames in a log file (stderr not a terminal)
        total=num_batches * cfg.num_inference_steps, desc="sampling", unit="step", disable=None
    )

    def record(step: dict) -> None:  # the first batch's steps, every `progression_every`
        bar.update()
        last = step["i"] == cfg.num_inference_steps - 1
        if step["i"] % cfg.progression_every == 0 or last or on_step is not None:
            on_cpu = {**step, "x_t": step["x_t"].float().cpu(), "x0": step["x0"].float().cpu()}
            if step["i"] % cfg.progression_every == 0 or last:
                progression.append(on_cpu)
            if on_step is not None:
                on_step(on_cpu)

    names = class_names_of(unet_config)
    prefixes = file_prefixes(names) if names else []
    shown = min(cfg.num_images, GRID_IMAGES)  # of each class row in the grids
    (out / "images").mkdir(parents=True, exist_ok=True)
    non_finite = 0

    def save(row: int, start: int, x_0: torch.Tensor) -> None:
        """A batch's images to images/ as soon as it is sampled: a stop keeps those before."""
        nonlocal non_finite
        non_finite += int((~torch.isfinite(x_0.flatten(1))).any(1).sum())
        prefix = "" if rows is None else f"{prefixes[rows[row]]}_"
        for k, image in enumerate(to_pil_list(x_0)):
            image.save(out / "images" / f"{prefix}{start + k:04d}.png")

    def draw(guidance: Any, count: int, progress: bool, write: Callable | None) -> torch.Tensor:
        """The first `count` images of each class row (or of the one unconditional row), from
        the same noises and DDPM seeds; returns the first `shown` of each row, for the grids.

        `batch_size` only splits the work: image j's DDPM step noise comes from (seed, j), and
        a batch of b images is guided with scale·b/num_images, its loss being the mean over the
        batch (the article's), so each image is pulled as in one batch of all num_images."""
        kept, first = [], True
        for row, label in enumerate(rows or [None]):
            step_generators = [  # DDPM's step noise, one generator per image
                torch.Generator(device).manual_seed(mix_seed(cfg.seed, j)) for j in range(count)
            ]
            noise = start_noise(cfg.seed, count, shape, cfg.batch_size)  # each row the same
            for start in range(0, count, cfg.batch_size):
                callback = (record if first else (lambda s: bar.update())) if progress else None
                batch = next(noise).to(device)
                share = scaled(guidance, len(batch) / cfg.num_images)
                with autocast:
                    x_0 = sample(
                        model, scheduler, batch, cfg.num_inference_steps, share,
                        step_generators[start : start + len(batch)], callback,
                        class_labels=label, cfg_scale=cfg_scale,
                    )  # fmt: skip
                x_0, first = x_0.detach().float().cpu(), False
                if write is not None:
                    write(row, start, x_0)
                kept.append(x_0[: max(0, shown - start)])
        return torch.cat(kept)

    x_0 = draw(guidance, cfg.num_images, progress=True, write=save)
    bar.close()
    plot_progression(progression, out / "progression.png")
    nrow = shown if rows is not None and len(rows) > 1 else None  # a row per class
    grid = save_grid(x_0, out / "grid.png", nrow=nrow)
    if shown < cfg.num_images:
        log.info(
            "%s: the first %d of the %d images%s (all of them in images/)",
            grid.name, shown, cfg.num_images, "" if rows is None else " of each class",
        )  # fmt: skip
    if guidance is not None:  # the same noise without guidance, beside it: what guidance did
        unguided = draw(None, shown, progress=False, write=None)  # the grid's images only
        save_grid(unguided, out / "grid_unguided.png", nrow=nrow)
        sampler = type(scheduler).__name__.removesuffix("Scheduler")
        title = f"{sampler}, {cfg.num_inference_steps} steps, seed {cfg.seed}"
        title += "" if cfg_scale is None else f", CFG {cfg_scale:g}"
        panels = [("unguided", unguided), (guidance.label, x_0)]
        save_panels(panels, out / "comparison.png", title, nrow=nrow)
    total = cfg.num_images * len(rows or [None])
    if non_finite:  # written anyway (black where NaN), so they can be looked at
        raise DifftuneError(
            f"pretrained={cfg.pretrained}: {non_finite} of {total} images are not finite "
            f"(NaN/inf; black in {grid}): check the pipeline's weights, or lower guidance.scale"
        )
    log.info("wrote %s, %d images and progression.png", grid, total)
    return grid
