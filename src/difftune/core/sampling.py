"""The one denoising loop (DDIM/DDPM/DPM-Solver), with optional guidance on the x̂0 prediction."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from difftune.core.conditioning import class_names_of, is_conditional, null_label
from difftune.core.options import check_step_count
from difftune.core.prediction import predict_x0
from difftune.errors import DifftuneError, is_int_at_least
from difftune.guidance.guide import Guidance, alphas_at, apply_guidance
from difftune.guidance.x0_clip import scheduler_x0_clip
from difftune.hub.pipelines import unet_downsample_factor
from difftune.seeds import mix_seed


def _unet_output(
    unet: Callable[..., Any],
    model_input: torch.Tensor,
    t: torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Call a diffusers UNet (or any model function) and return its raw output tensor."""
    out = unet(model_input, t) if class_labels is None else unet(model_input, t, class_labels)
    if isinstance(out, torch.Tensor):
        return out
    return out.sample if hasattr(out, "sample") else out[0]


def _as_list(guidance: Guidance | Sequence[Guidance] | None) -> list[Guidance]:
    if guidance is None:
        return []
    guidances = list(guidance) if isinstance(guidance, (list, tuple)) else [guidance]
    for g in guidances:
        if not isinstance(g, Guidance):
            raise DifftuneError(
                f"sample guidance={g!r}: expected a Guidance, a list of them or None"
            )
    return guidances


def _check_noise(unet: Any, noise: Any) -> None:
    """x_T fits the UNet: B×C×H×W floats with its channels, a size its down blocks halve
    evenly, its dtype and device; one line each, not a shape error from deep in the UNet."""
    if not isinstance(noise, torch.Tensor) or noise.ndim != 4 or not noise.is_floating_point():
        shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise DifftuneError(f"sample noise={shape}: expected a float tensor B×C×H×W")
    config = getattr(unet, "config", None)
    if config is not None and "in_channels" in config:
        channels, side = config["in_channels"], unet_downsample_factor(config)
        if noise.shape[1] != channels or noise.shape[2] % side or noise.shape[3] % side:
            raise DifftuneError(
                f"sample noise of shape {tuple(noise.shape)}: the UNet takes {channels} channels "
                f"and sides that are multiples of {side} (e.g. {config['sample_size']})"
            )
    parameter = next(iter(unet.parameters()), None) if hasattr(unet, "parameters") else None
    if parameter is None:
        return
    if parameter.device != noise.device:
        raise DifftuneError(
            f"sample noise on {noise.device}, the UNet on {parameter.device}: move one "
            f"(noise.to('{parameter.device}'))"
        )
    autocast = torch.is_autocast_enabled(noise.device.type)
    if parameter.dtype != noise.dtype and not autocast:
        raise DifftuneError(
            f"sample noise of dtype {noise.dtype}, the UNet's weights {parameter.dtype}: pass "
            f"noise.to({parameter.dtype}), or sample under torch.autocast"
        )


def _labels(
    unet: Any, noise: torch.Tensor, class_labels: Any, cfg_scale: float | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(labels, null labels) for the UNet calls: None for an unconditional UNet; the null label
    where a conditional UNet gets no `class_labels`; the null labels only under CFG."""
    config = getattr(unet, "config", {})
    number = isinstance(cfg_scale, int | float) and not isinstance(cfg_scale, bool)
    if cfg_scale is not None and not (number and math.isfinite(cfg_scale)):
        raise DifftuneError(f"cfg_scale={cfg_scale}: expected a finite number (3 is usual)")
    if not is_conditional(config):
        if class_labels is not None or cfg_scale is not None:
            raise DifftuneError(
                "class_labels / cfg_scale: this UNet has no class embedding (an unconditional "
                "model); fine-tune it with model.conditioning=class first"
            )
        return None, None
    null = torch.full((noise.shape[0],), null_label(config), dtype=torch.long, device=noise.device)
    if class_labels is None:
        if cfg_scale is not None:
            raise DifftuneError(f"cfg_scale={cfg_scale}: needs class_labels to guide towards")
        return null, None
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=noise.device)
    labels = labels.expand(noise.shape[0]) if labels.ndim == 0 else labels
    if labels.shape != null.shape:
        raise DifftuneError(
            f"class_labels: {tuple(labels.shape)} labels for {noise.shape[0]} images"
        )
    outside = labels[(labels < 0) | (labels > null_label(config))]
    if outside.numel():  # the embedding's IndexError otherwise, from deep in the UNet
        raise DifftuneError(
            f"class_labels: {int(outside[0])} is not a class id of this UNet: 0..{null[0] - 1} "
            f"are its classes ({', '.join(class_names_of(config) or [])}), {null[0]} the null label"
        )
    return labels, (null if cfg_scale is not None else None)


def _model_output(
    unet: Callable[..., Any],
    model_input: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    null: torch.Tensor | None,
    cfg_scale: float | None,
) -> torch.Tensor:
    """UNet(x_t, t, c); under CFG ε_∅ + w·(ε_c − ε_∅) from one batched call (Ho & Salimans
    2022, Eq. 6, written as the interpolation w = 1 + their w)."""
    if null is None:
        return _unet_output(unet, model_input, t, labels)
    both = _unet_output(unet, torch.cat([model_input, model_input]), t, torch.cat([labels, null]))
    conditional, unconditional = both.chunk(2)
    return unconditional + cfg_scale * (conditional - unconditional)


@contextlib.contextmanager
def _loss_randomness(
    generator: torch.Generator | Sequence[torch.Generator] | None, device: torch.device, i: int
) -> Iterator[None]:
    """Random draws inside guidance losses (CLIP's cut-outs) at step i, seeded from (the seed(s)
    of `generator`, i) on a forked global RNG: the same generator gives the same images whatever
    the global state, and sampling leaves that state as it was. No generator: the global RNG."""
    if generator is None:
        yield
        return
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    seed = mix_seed(i, *(g.initial_seed() for g in generators))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def set_timesteps(scheduler: Any, num_inference_steps: Any, device: Any = None) -> None:
    """`scheduler.set_timesteps`, with a step count it cannot take as one `DifftuneError` line."""
    n = num_inference_steps
    if not is_int_at_least(n, 1):  # diffusers divides by it
        raise DifftuneError(f"num_inference_steps={n}: expected >= 1 (an integer)")
    check_step_count(n, scheduler.config.num_train_timesteps, type(scheduler).__name__)
    try:
        scheduler.set_timesteps(n, device=device)
    except ValueError as err:  # e.g. more steps than the training timesteps
        raise DifftuneError(
            f"num_inference_steps={n}: {str(err).strip().splitlines()[0]}"
        ) from None


def sample(
    unet: Callable[..., Any],
    scheduler: Any,
    noise: torch.Tensor,
    num_inference_steps: int = 40,
    guidance: Guidance | Sequence[Guidance] | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    class_labels: torch.Tensor | int | None = None,
    cfg_scale: float | None = None,
) -> torch.Tensor:
    """Ancestral/ODE sampling (DDPM, Ho et al. 2020; DDIM, Song et al. 2021) with x̂0 guidance.

    A class-conditional UNet gets `class_labels` (ids, one per image or one for all; None: the
    null label); `cfg_scale` w adds classifier-free guidance, ε_∅ + w·(ε_c − ε_∅): 1 is the
    conditional model, 0 the unconditional one. Loss guidance then acts on the x̂0 of that ε.
    `generator` draws the scheduler's step noise (DDPM): one for the batch, or one per image,
    so that an image's noise does not depend on the batch it is drawn in; its seed also seeds
    the random draws of guidance losses (CLIP's cut-outs), on a forked RNG.
    Returns the raw final sample in model space (not clamped), on ``noise``'s device and dtype.
    """
    _check_noise(unet, noise)
    labels, null = _labels(unet, noise, class_labels, cfg_scale)
    guidances = _as_list(guidance)
    grad_through_unet = any(g.through_unet for g in guidances)
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    for g in guidances:
        g.begin()

    # 1. the timesteps (descending) and x_T, scaled for schedulers that work in sigma space
    set_timesteps(scheduler, num_inference_steps, noise.device)
    x_t = noise * scheduler.init_noise_sigma
    alpha_prods = alphas_at(scheduler, scheduler.timesteps, noise.device)  # ᾱ_t, t the timestep
    x0_clip = scheduler_x0_clip(scheduler)  # x̂0 clipped as scheduler.step clips it
    nonfinite = torch.zeros((), dtype=torch.long, device=noise.device)  # steps, no sync

    for i, t in enumerate(scheduler.timesteps):
        alpha_prod_t = alpha_prods[i]

        # 2. the model output at x_t (CFG-combined under cfg_scale); a graph through the UNet
        #    only when a guidance needs one
        with torch.set_grad_enabled(grad_through_unet):
            if grad_through_unet:
                x_t = x_t.detach().requires_grad_()
            model_input = scheduler.scale_model_input(x_t, t)
            model_output = _model_output(unet, model_input, t, labels, null, cfg_scale)
        nonfinite += ~torch.isfinite(model_output.detach()).all()

        # 3. guidance on x̂0 as the scheduler clips it: x_t ← x_t − s·w(t)·∇L(x̂0)
        #    and/or ε ← ε + √(1−ᾱ_t)·s·w(t)·∇L(x̂0)
        if guidances:
            with _loss_randomness(generator, noise.device, i):
                x_t, model_output = apply_guidance(
                    guidances, x_t, model_output, alpha_prod_t, prediction_type, x0_clip
                )

        with torch.no_grad():
            # 4. progress report: x_t beside the x̂0 it predicts (no second scheduler.step)
            if callback is not None:
                x0_pred = x0_clip(predict_x0(model_output, x_t, alpha_prod_t, prediction_type))
                callback({"i": i, "t": t, "x_t": x_t.detach(), "x0": x0_pred.detach()})

            # 5. exactly one scheduler step per timestep: x_t → x_{t-1}
            x_t = scheduler.step(model_output, t, x_t, generator=generator).prev_sample

    for g in guidances:
        g.end()
    if nonfinite:  # NaN/inf weights or inputs: the images are not images; say so
        steps = f"{int(nonfinite)} of {len(scheduler.timesteps)} steps"
        warnings.warn(f"sample: the model output was not finite at {steps}", RuntimeWarning,
                      stacklevel=2)  # fmt: skip
    return x_t.detach()
