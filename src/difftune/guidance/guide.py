"""Guidance: the one place that turns a loss on x̂0 into a gradient on x_t or a correction on ε."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from difftune.core.prediction import eps_shift_to_output, predict_x0, to_epsilon
from difftune.guidance.options import SCHEDULE_NAMES, GuidanceError, check_guidance
from difftune.guidance.x0_clip import X0Clip


def _ones(alpha_prod_t: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(alpha_prod_t)


def _alpha_bar(alpha_prod_t: torch.Tensor) -> torch.Tensor:
    return alpha_prod_t


def _sqrt_alpha_bar(alpha_prod_t: torch.Tensor) -> torch.Tensor:
    return alpha_prod_t.sqrt()


def _sqrt_one_minus_alpha_bar(alpha_prod_t: torch.Tensor) -> torch.Tensor:
    return (1 - alpha_prod_t).sqrt()


#: Gradient-scaling schedules w(ᾱ_t), evaluated at ᾱ_t = alphas_cumprod[t] (t the timestep).
SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dict(
    zip(
        SCHEDULE_NAMES, (_ones, _alpha_bar, _sqrt_alpha_bar, _sqrt_one_minus_alpha_bar), strict=True
    )
)


def alphas_at(
    scheduler, timesteps: torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """ᾱ_t = scheduler.alphas_cumprod[t] for each timestep t (never indexed by the loop step)."""
    return scheduler.alphas_cumprod.to(device)[timesteps.to(device).long()]


class Guidance:
    """Loss guidance on x̂0 (Dhariwal & Nichol 2021, eq. 14 for apply_to="eps")."""

    def __init__(
        self,
        loss: Callable[[torch.Tensor], torch.Tensor],
        scale: float,
        through_unet: bool = False,
        schedule: str = "none",
        apply_to: str = "x",
        grad_clip_rms: float | None = None,
        clip_x0: bool = True,
        per_image: bool = False,
    ) -> None:
        if not callable(loss):
            raise GuidanceError(f"guidance loss={loss!r} is not callable: pass x0 -> scalar tensor")
        flags = {"through_unet": through_unet, "clip_x0": clip_x0, "per_image": per_image}
        check_guidance(scale, schedule, apply_to, grad_clip_rms, flags)
        self.loss = loss
        self.scale = float(scale)
        self.through_unet = through_unet
        self.schedule = schedule
        self.apply_to = apply_to
        self.grad_clip_rms = None if grad_clip_rms is None else float(grad_clip_rms)
        #: the loss sees x̂0 clipped/thresholded as the scheduler's `step` does (the article's x0)
        self.clip_x0 = clip_x0
        #: the scale is each image's, whatever the batch: a loss that averages over the B images
        #: of a batch (the article's, all of difftune's) is taken times B, so each image is pulled
        #: as if sampled alone; off, the article's mean: each image's pull falls as 1/B
        self.per_image = per_image
        #: steps of the last sample() where the gradient was not finite (taken unguided)
        self.nonfinite_steps = 0

    def __repr__(self) -> str:
        return (
            f"Guidance({self.loss!r}, scale={self.scale}, through_unet={self.through_unet}, "
            f"schedule={self.schedule!r}, apply_to={self.apply_to!r}, "
            f"grad_clip_rms={self.grad_clip_rms}, clip_x0={self.clip_x0}, "
            f"per_image={self.per_image})"
        )

    @property
    def label(self) -> str:
        """A short caption: `guided: colour (0.8, 0.4, 0.6), scale 40` (ASCII: PIL's font)."""
        what = getattr(self.loss, "label", None) or type(self.loss).__name__
        return f"guided: {what}, scale {self.scale:g}"

    def weight(self, alpha_prod_t: torch.Tensor) -> torch.Tensor:
        """w(ᾱ_t) of the chosen schedule."""
        return SCHEDULES[self.schedule](alpha_prod_t)

    def begin(self) -> None:
        """Reset the non-finite counter at the start of a sampling run."""
        self.nonfinite_steps = 0

    def end(self) -> None:
        """Warn once per run when some steps were taken unguided."""
        if self.nonfinite_steps:
            warnings.warn(
                f"{self!r}: non-finite guidance gradient at {self.nonfinite_steps} step(s); "
                "those steps were taken unguided",
                RuntimeWarning,
                stacklevel=3,
            )

    def gradient(
        self,
        x_t: torch.Tensor,
        model_output: torch.Tensor,
        alpha_prod_t: torch.Tensor,
        prediction_type: str,
        retain_graph: bool = False,
        x0_clip: X0Clip | None = None,
    ) -> torch.Tensor | None:
        """s·w(t)·∇_{x_t} L(clip(x̂0(x_t))), RMS-clamped per sample; None where not finite.

        `x0_clip` is the scheduler's own x̂0 clipping (see `scheduler_x0_clip`), applied when
        `clip_x0` is on, so the loss sees the `pred_original_sample` the scheduler steps with.
        """
        with torch.enable_grad():
            if self.through_unet:
                # exact: x_t is the leaf the UNet saw, model_output carries its graph
                x_in = x_t
                x0_pred = predict_x0(model_output, x_in, alpha_prod_t, prediction_type)
            else:
                # cheap: ε̂ held fixed, differentiate x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t only
                x_in = x_t.detach().requires_grad_()
                eps = to_epsilon(model_output.detach(), x_t.detach(), alpha_prod_t, prediction_type)
                x0_pred = predict_x0(eps, x_in, alpha_prod_t, "epsilon")
            if self.clip_x0 and x0_clip is not None:
                x0_pred = x0_clip(x0_pred)
            scale = self.scale * (x0_pred.shape[0] if self.per_image else 1)
            loss = self.loss(x0_pred) * (scale * self.weight(alpha_prod_t))
            (grad,) = torch.autograd.grad(loss.sum(), x_in, retain_graph=retain_graph)
        if not bool(torch.isfinite(grad).all()):
            self.nonfinite_steps += 1
            return None
        if self.grad_clip_rms is not None:
            rms = grad.pow(2).flatten(1).mean(1).sqrt()
            factor = (self.grad_clip_rms / rms).clamp(max=1.0)
            grad = grad * factor.view(-1, *([1] * (grad.dim() - 1)))
        return grad


def apply_guidance(
    guidances: Sequence[Guidance],
    x_t: torch.Tensor,
    model_output: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    prediction_type: str,
    x0_clip: X0Clip | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the guidance terms at (x_t, ε̂) and return the guided (x_t, model_output), detached."""
    last_through_unet = max((k for k, g in enumerate(guidances) if g.through_unet), default=-1)
    delta_x: torch.Tensor | None = None
    delta_eps: torch.Tensor | None = None
    for k, g in enumerate(guidances):
        retain = k < last_through_unet
        grad = g.gradient(x_t, model_output, alpha_prod_t, prediction_type, retain, x0_clip)
        if grad is None:
            continue
        if g.apply_to == "x":  # x_t ← x_t − s·w(t)·∇L
            delta_x = grad if delta_x is None else delta_x + grad
        else:  # ε ← ε + √(1−ᾱ_t)·s·w(t)·∇L
            shift = (1 - alpha_prod_t) ** 0.5 * grad
            delta_eps = shift if delta_eps is None else delta_eps + shift
    x_t, model_output = x_t.detach(), model_output.detach()
    if delta_x is not None:
        x_t = x_t - delta_x
    if delta_eps is not None:
        model_output = model_output + eps_shift_to_output(delta_eps, alpha_prod_t, prediction_type)
    return x_t, model_output
