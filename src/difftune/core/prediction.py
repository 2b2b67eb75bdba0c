"""Prediction-type algebra, the one place training and guidance read it from.

A UNet predicts ε (`epsilon`), v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (`v_prediction`, Salimans & Ho 2022) or
x0 itself (`sample`), where x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (Ho et al. 2020, eq. 4).
"""

from __future__ import annotations

from typing import Any

import torch

from difftune.errors import DifftuneError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class PredictionTypeError(DifftuneError, ValueError):
    """A prediction type other than the three above, as one line."""


def check_prediction_type(prediction_type: str) -> str:
    """`prediction_type` itself when it is one of PREDICTION_TYPES; else one clear line."""
    if prediction_type not in PREDICTION_TYPES:
        raise PredictionTypeError(
            f"scheduler prediction_type='{prediction_type}' is not one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    return prediction_type


def training_target(
    scheduler: Any, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the UNet must predict for `x_t = add_noise(x_0, noise, t)`."""
    prediction_type = check_prediction_type(scheduler.config.prediction_type)
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x_0, noise, t)
    return x_0 if prediction_type == "sample" else noise


def predict_x0(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """x̂0 from the model output: DDIM eq. 12 (epsilon), Salimans & Ho 2022 (v), or direct."""
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha_prod_t) ** 0.5 * model_output) / alpha_prod_t**0.5
    if prediction_type == "v_prediction":
        return alpha_prod_t**0.5 * x_t - (1 - alpha_prod_t) ** 0.5 * model_output
    return model_output


def to_epsilon(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """ε̂ from the model output, inverting x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε."""
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type == "v_prediction":
        return alpha_prod_t**0.5 * model_output + (1 - alpha_prod_t) ** 0.5 * x_t
    if prediction_type == "sample":
        return (x_t - alpha_prod_t**0.5 * model_output) / (1 - alpha_prod_t) ** 0.5
    return model_output


def eps_shift_to_output(
    delta_eps: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The model-output change that shifts ε̂ by delta_eps at a fixed x_t."""
    prediction_type = check_prediction_type(prediction_type)
    if prediction_type == "v_prediction":
        return delta_eps / alpha_prod_t**0.5
    if prediction_type == "sample":
        return -delta_eps * (1 - alpha_prod_t) ** 0.5 / alpha_prod_t**0.5
    return delta_eps


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023, eq. 9) for the scheduler's prediction target;
    the SNR is diffusers' `compute_snr`."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    clipped = snr.clamp(max=gamma)
    prediction_type = check_prediction_type(scheduler.config.prediction_type)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped
