"""The numbers and switches of `model.*`, and a sampling step count, checked with no UNet and no
torch or diffusers imported."""

from difftune.errors import DifftuneError, is_int_at_least, is_number


def check_module_options(
    snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    class_embedding_lr: float | None = None,
    **levers: bool,
) -> None:
    """The numbers and switches of `model.*` that need no UNet: checked by the module, and by
    the preflight of every job of a command line before any starts."""
    if class_embedding_lr is not None and not (is_number(class_embedding_lr) and
                                               class_embedding_lr > 0):  # fmt: skip
        raise DifftuneError(f"model.class_embedding_lr={class_embedding_lr} must be > 0 or null")
    if snr_gamma is not None and not (is_number(snr_gamma) and snr_gamma > 0):
        raise DifftuneError(f"model.snr_gamma={snr_gamma} must be > 0 (5 is usual) or null")
    if not (is_number(noise_offset) and noise_offset >= 0):
        raise DifftuneError(f"model.noise_offset={noise_offset} must be >= 0 (0.05-0.1 usual)")
    for key, value in levers.items():
        if not isinstance(value, bool):
            raise DifftuneError(f"model.{key}={value} must be true or false")


def check_step_count(num_inference_steps: int, num_train_timesteps: int, scheduler: str) -> None:
    """At most one sampling step per training timestep (`scheduler`, a class name: DDIM and DDPM
    refuse more); DPM-Solver one fewer: it takes num_train_timesteps steps, and then repeats a
    timestep (linspace spacing) or fails at the last step, after all the others (leading)."""
    limit = num_train_timesteps - scheduler.startswith("DPMSolverMultistep")
    if num_inference_steps > limit:
        raise DifftuneError(
            f"num_inference_steps={num_inference_steps}: more than {scheduler} takes on the "
            f"pipeline's {num_train_timesteps} training timesteps; valid: 1 to {limit}"
        )


def check_ema_options(
    decay: float, warmup: bool, inv_gamma: float, power: float, update_every_n_steps: int
) -> None:
    """The settings of `ema=default` (the EMA callback checks them, and so does the preflight):
    a decay of 0 or 1 copies or freezes the weights; the warm-up 1 − (1 + step/γ)^−p needs γ and
    p above 0 (p < 0 gave negative decays: an extrapolation, not an average)."""
    if not (is_number(decay) and 0.0 < decay < 1.0):
        raise DifftuneError(f"ema.decay={decay} must be in (0, 1)")
    if not isinstance(warmup, bool):
        raise DifftuneError(f"ema.warmup={warmup!r}: expected true or false")
    for key, value in (("inv_gamma", inv_gamma), ("power", power)):
        if not (is_number(value) and value > 0):
            raise DifftuneError(f"ema.{key}={value} must be a number > 0")
    if not is_int_at_least(update_every_n_steps, 1):
        raise DifftuneError(
            f"ema.update_every_n_steps={update_every_n_steps} must be an integer >= 1"
        )
