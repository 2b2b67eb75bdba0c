"""The one denoising loop (DDIM/DDPM/DPM-Solver), with optional guidance on the x̂0 prediction."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from difftune.core.prediction import predict_x0
from difftune.errors import DifftuneError, is_int_at_least
from difftune.guidance.guide import Guidance, alphas_at, apply_guidance
from difftune.guidance.x0_clip import scheduler_x0_clip


def _unet_output(
    unet: Callable[..., Any], model_input: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Call a diffusers UNet (or any model function) and return its raw output tensor."""
    out = unet(model_input, t)
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


def set_timesteps(scheduler: Any, num_inference_steps: Any, device: Any = None) -> None:
    """`scheduler.set_timesteps`, with a step count it cannot take as one `DifftuneError` line."""
    n = num_inference_steps
    if not is_int_at_least(n, 1):  # diffusers divides by it
        raise DifftuneError(f"num_inference_steps={n}: expected >= 1 (an integer)")
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
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """Ancestral/ODE sampling (DDPM, Ho et al. 2020; DDIM, Song et al. 2021) with x̂0 guidance.

    Returns the raw final sample in model space (not clamped), on ``noise``'s device and dtype.
    """
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

        # 2. the model output at x_t; a graph through the UNet only when a guidance needs one
        with torch.set_grad_enabled(grad_through_unet):
            if grad_through_unet:
                x_t = x_t.detach().requires_grad_()
            model_input = scheduler.scale_model_input(x_t, t)
            model_output = _unet_output(unet, model_input, t)
        nonfinite += ~torch.isfinite(model_output.detach()).all()

        # 3. guidance on x̂0 as the scheduler clips it: x_t ← x_t − s·w(t)·∇L(x̂0)
        #    and/or ε ← ε + √(1−ᾱ_t)·s·w(t)·∇L(x̂0)
        if guidances:
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
