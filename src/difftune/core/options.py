"""The numbers and switches of `model.*`, and a sampling step count, checked with no UNet and no
torch or diffusers imported."""

from difftune.errors import DifftuneError, is_number


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
