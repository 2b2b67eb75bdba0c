"""`sample_images(cfg)`, the `sample.py` job: load a pipeline, sample it, write grids and images."""

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from difftune.core.sampling import sample, set_timesteps
from difftune.errors import DifftuneError, require_int
from difftune.hub.pipelines import load_noise_scheduler, load_unet, load_unet_config
from difftune.pictures.images import save_grid, save_panels, to_pil_list
from difftune.pictures.plots import plot_progression, plot_schedules
from difftune.run.checks import check_device, check_image_size, check_seed

log = logging.getLogger(__name__)

PLOTS = ("schedules",)


def make_scheduler(cfg: DictConfig) -> Any:
    """The `scheduler` group's factory applied to the pipeline's own noise schedule, its steps set.

    `set_timesteps` checks `num_inference_steps` here (against the scheduler's own limit too),
    before any UNet loads.
    """
    noise_schedule = load_noise_scheduler(cfg.pretrained, key="pretrained").config
    scheduler = hydra.utils.instantiate(cfg.scheduler)(noise_schedule)
    set_timesteps(scheduler, cfg.num_inference_steps)
    return scheduler


def _check(cfg: DictConfig) -> None:
    """The keys only `sample.py` has; the scheduler and the guidance check their own."""
    for key in ("num_images", "batch_size", "progression_every"):
        require_int(key, cfg.get(key), 1)
    if cfg.get("plot") not in (None, *PLOTS):
        raise DifftuneError(f"plot={cfg.plot!r} is not one of {', '.join(PLOTS)} (or null)")
    check_device(cfg.device)
    check_seed(cfg.get("seed"))


def sample_images(cfg: DictConfig) -> Path:
    """Sample `cfg.pretrained` into `cfg.paths.output_dir`; returns the path of `grid.png`."""
    _check(cfg)
    out = Path(cfg.paths.output_dir)
    if cfg.get("plot") == "schedules":
        alphas_cumprod = load_noise_scheduler(cfg.pretrained, key="pretrained").alphas_cumprod
        path = plot_schedules(alphas_cumprod, out / "schedules.png")
        log.info("wrote %s", path)
        return path
    unet_config = load_unet_config(cfg.pretrained, key="pretrained")
    size = cfg.image_size or unet_config["sample_size"]
    check_image_size(size, unet_config, key="image_size")
    scheduler = make_scheduler(cfg)
    guidance = hydra.utils.instantiate(cfg.get("guidance"))  # None for guidance=none
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    unet = load_unet(cfg.pretrained, key="pretrained").to(device).eval().requires_grad_(False)

    generator = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(cfg.num_images, unet.config.in_channels, size, size, generator=generator)
    step_generator = torch.Generator(device).manual_seed(cfg.seed)  # DDPM's per-step noise
    progression: list[dict] = []
    num_batches = -(-cfg.num_images // cfg.batch_size)
    bar = tqdm(  # disable=None: no bar frames in a log file (stderr not a terminal)
        total=num_batches * cfg.num_inference_steps, desc="sampling", unit="step", disable=None
    )

    def record(step: dict) -> None:  # the first batch's steps, every `progression_every`
        bar.update()
        if step["i"] % cfg.progression_every == 0 or step["i"] == cfg.num_inference_steps - 1:
            progression.append({**step, "x_t": step["x_t"].cpu(), "x0": step["x0"].cpu()})

    images = []
    for start in range(0, cfg.num_images, cfg.batch_size):
        batch = noise[start : start + cfg.batch_size].to(device)
        callback = record if start == 0 else (lambda step: bar.update())
        x_0 = sample(
            unet, scheduler, batch, cfg.num_inference_steps, guidance, step_generator, callback
        )
        images.append(x_0.detach().cpu())
    bar.close()
    x_0 = torch.cat(images)
    for index, image in enumerate(to_pil_list(x_0)):
        (out / "images").mkdir(parents=True, exist_ok=True)
        image.save(out / "images" / f"{index:04d}.png")
    plot_progression(progression, out / "progression.png")
    grid = save_grid(x_0, out / "grid.png")
    if guidance is not None:  # the same noise without guidance, beside it: what guidance did
        step_generator = torch.Generator(device).manual_seed(cfg.seed)
        unguided = torch.cat(
            [
                sample(
                    unet, scheduler, noise[start : start + cfg.batch_size].to(device),
                    cfg.num_inference_steps, None, step_generator,
                ).cpu()
                for start in range(0, cfg.num_images, cfg.batch_size)
            ]
        )  # fmt: skip
        save_grid(unguided, out / "grid_unguided.png")
        sampler = type(scheduler).__name__.removesuffix("Scheduler")
        title = f"{sampler}, {cfg.num_inference_steps} steps, seed {cfg.seed}"
        save_panels([("unguided", unguided), (guidance.label, x_0)], out / "comparison.png", title)
    bad = int((~torch.isfinite(x_0.flatten(1))).any(1).sum())
    if bad:  # written anyway (black where NaN), so they can be looked at
        raise DifftuneError(
            f"pretrained={cfg.pretrained}: {bad} of {len(x_0)} images are not finite (NaN/inf; "
            f"black in {grid}): check the pipeline's weights, or lower guidance.scale"
        )
    log.info("wrote %s, %d images and progression.png", grid, len(x_0))
    return grid
