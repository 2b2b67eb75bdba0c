"""The settings of a guidance that are checked without torch: by `Guidance`, `ColorLoss` and
`ClipLoss` when they are made, and by the preflight of `sample.py` and `train.py` on the
`guidance.*` keys of the command line (a typo answers before torch loads)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from difftune.errors import DifftuneError, is_int_at_least, is_number


class GuidanceError(DifftuneError, ValueError):
    """A bad guidance setting (unknown schedule or target, empty prompt, ...), as one line."""


#: the gradient-scaling schedules w(ᾱ_t) (`guide.SCHEDULES` holds their functions)
SCHEDULE_NAMES = ("none", "alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar")
APPLY_TO = ("x", "eps")
#: the keys of `conf/guidance/*.yaml` that go to `Guidance`, and each preset's own
GUIDANCE_KEYS = (
    "scale", "through_unet", "schedule", "apply_to", "grad_clip_rms", "clip_x0", "per_image",
)  # fmt: skip
PRESET_KEYS = {
    "color": ("target_rgb",),
    "clip": ("prompt", "model_name", "pretrained", "n_cuts", "cut_batches"),
}
PRESETS = {  # the presets' `_target_`s (the package's export, and the module's)
    f"difftune.guidance{module}.{name}_guidance": name
    for name in PRESET_KEYS
    for module in ("", ".presets")
}


def check_guidance(
    scale: Any,
    schedule: Any = "none",
    apply_to: Any = "x",
    grad_clip_rms: Any = None,
    flags: Mapping[str, Any] | None = None,
    prefix: str = "guidance ",
) -> None:
    """One line for the first bad setting of `Guidance`; `flags` are its true/false settings.
    `prefix` names where they came from: "guidance " (Python) or "guidance." (the config)."""
    if not is_number(scale):
        raise GuidanceError(f"{prefix}scale={scale!r}: expected a finite number")
    if schedule not in SCHEDULE_NAMES:
        raise GuidanceError(
            f"{prefix}schedule={schedule!r}: expected one of {', '.join(SCHEDULE_NAMES)}"
        )
    if apply_to not in APPLY_TO:
        raise GuidanceError(f"{prefix}apply_to={apply_to!r}: expected one of {', '.join(APPLY_TO)}")
    if grad_clip_rms is not None and not (is_number(grad_clip_rms) and grad_clip_rms > 0):
        raise GuidanceError(f"{prefix}grad_clip_rms={grad_clip_rms!r}: expected > 0 or null")
    for key, value in (flags or {}).items():
        if not isinstance(value, bool):  # bool("false") is True: a costly surprise
            raise GuidanceError(f"{prefix}{key}={value!r}: expected true or false")


def color_target(target_rgb: Any, prefix: str = "ColorLoss ") -> tuple[float, float, float]:
    """The target colour as 3 floats in [0, 1]; one line otherwise."""
    try:  # text is not three numbers, though float() takes each of its characters
        target = () if isinstance(target_rgb, str) else tuple(float(v) for v in target_rgb)
    except (TypeError, ValueError):
        target = ()
    if len(target) != 3 or not all(0.0 <= v <= 1.0 for v in target):
        raise GuidanceError(
            f"{prefix}target_rgb={target_rgb!r}: expected 3 values in [0, 1], e.g. "
            "guidance.target_rgb=[0.8,0.4,0.6]"
        )
    return target  # type: ignore[return-value]


def clip_prompts(
    prompt: Any, weights: Any, n_cuts: Any, cut_batches: Any, prefix: str = "ClipLoss "
) -> tuple[list[str], list[float]]:
    """The prompts and their weights (1 each by default); one line for a bad setting."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt or ())
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise GuidanceError(f"{prefix}prompt={prompt!r}: expected non-empty text(s)")
    try:
        weights = [1.0] * len(prompts) if weights is None else [float(w) for w in weights]
    except (TypeError, ValueError):
        weights = []
    if len(weights) != len(prompts) or sum(weights) == 0:
        raise GuidanceError(
            f"{prefix}weights={weights!r}: expected {len(prompts)} weight(s), non-zero sum"
        )
    if not is_int_at_least(n_cuts, 1):
        raise GuidanceError(f"{prefix}n_cuts={n_cuts!r}: expected an integer >= 1")
    if not (is_int_at_least(cut_batches, 1) and cut_batches <= n_cuts):
        raise GuidanceError(f"{prefix}cut_batches={cut_batches!r}: expected 1..n_cuts={n_cuts}")
    return prompts, weights


def check_guidance_config(node: Mapping[str, Any] | None) -> None:
    """The `guidance` node of a command line, checked as the preset it names would check it:
    its keys (a key of another preset: `guidance=[color,clip]`, which Hydra merges into one
    node), then their values. A `_target_` of the user's own is left to its constructor."""
    preset = None if node is None else PRESETS.get(node.get("_target_"))
    if preset is None:
        return
    own = {"_target_", *GUIDANCE_KEYS, *PRESET_KEYS[preset]}
    for key in node:
        if key in own:
            continue
        other = next((name for name, keys in PRESET_KEYS.items() if key in keys), None)
        if other is not None:
            raise GuidanceError(
                f"guidance=[{other},{preset}]: Hydra merges a list of presets into one node "
                f"(guidance={preset} with guidance.{key} of guidance={other}); pick one, "
                f"guidance={preset} or guidance={other} (to sum several losses: "
                "difftune.sampling.sample(..., guidance=[g1, g2]) in Python)"
            )
        raise GuidanceError(
            f"guidance.{key}={node[key]!r}: not a key of guidance={preset}; its keys: "
            f"{', '.join(sorted(own - {'_target_'}))}"
        )
    missing = sorted(own - {"_target_"} - set(node))
    if missing:
        raise GuidanceError(f"guidance.{missing[0]}: missing from guidance={preset}")
    flags = {key: node[key] for key in ("through_unet", "clip_x0", "per_image")}
    check_guidance(
        node["scale"], node["schedule"], node["apply_to"], node["grad_clip_rms"], flags,
        prefix="guidance.",
    )  # fmt: skip
    if preset == "color":
        color_target(node["target_rgb"], prefix="guidance.")
    else:
        clip_prompts(node["prompt"], None, node["n_cuts"], node["cut_batches"], "guidance.")
