"""Class conditioning: ids 0..n−1 name the classes, id n is the null label of classifier-free
guidance (Ho & Salimans 2022); a conditional UNet keeps its names in `config["_class_names"]`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from difftune.errors import DifftuneError

if TYPE_CHECKING:  # the checks (`check_conditioning` on a config) import neither
    import torch
    from diffusers import UNet2DModel

NAMES_KEY = "_class_names"  # diffusers keeps `_` keys through save/load without a warning
NEEDS_LABELS = (
    "model.conditioning=class needs labelled data: set data.label_column (hf: a column; "
    "imagefolder: label, the sub-folder names; synthetic: style)"
)


def _config(unet_or_config: Any) -> Mapping[str, Any]:
    return unet_or_config if isinstance(unet_or_config, Mapping) else unet_or_config.config


def is_conditional(unet_or_config: Any) -> bool:
    """Whether a UNet (or its config) has a class embedding of ids (`num_class_embeds`); the
    continuous kinds (`class_embed_type` timestep / identity) are refused in one line."""
    config = _config(unet_or_config)
    if config.get("class_embed_type") is not None and not config.get("num_class_embeds"):
        raise DifftuneError(
            f"class_embed_type={config['class_embed_type']!r}: only class ids "
            "(num_class_embeds) are supported"
        )
    return bool(config.get("num_class_embeds"))


def class_names_of(unet_or_config: Any) -> list[str] | None:
    """The class names of a conditional UNet; ids as names ("0", "1", …) when it has none saved."""
    config = _config(unet_or_config)
    if not is_conditional(config):
        return None
    names = config.get(NAMES_KEY)
    if names is None and config.get("num_class_embeds"):  # a diffusers model, not ours
        names = [str(i) for i in range(int(config["num_class_embeds"]) - 1)]
    return list(names) if names is not None else None


def null_label(unet_or_config: Any) -> int:
    """The id of the null label: the last row of the class embedding."""
    return int(_config(unet_or_config)["num_class_embeds"]) - 1


def class_label_id(value: Any, class_names: Sequence[str], key: str = "class_label") -> int:
    """A class name or id as the id; one line naming the valid names and ids otherwise."""
    names = list(class_names)
    if isinstance(value, str) and value in names:
        return names.index(value)
    as_int = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        as_int = int(value)
    if as_int is not None and 0 <= as_int < len(names):
        return as_int
    valid = ", ".join(f"{name} ({i})" for i, name in enumerate(names))
    raise DifftuneError(f"{key}={value!r} is not a class of this model; valid: {valid}")


def add_class_embedding(unet: UNet2DModel, class_names: Sequence[str]) -> UNet2DModel:
    """The UNet with an `nn.Embedding(n + 1, d)` class embedding, zero-initialised, so that every
    label (the null one too) gives exactly the pretrained output until the fine-tune moves it.

    A UNet that is conditional already is returned as it is when its classes are these.
    """
    import torch
    from diffusers import UNet2DModel

    names = [str(name) for name in class_names]
    if not names:
        raise DifftuneError("model.conditioning=class: the data has no classes")
    if is_conditional(unet):
        have = class_names_of(unet)
        if have != names:
            raise DifftuneError(
                f"model.pretrained is conditional on classes {have}, the data's are {names}: "
                "train on the same classes, or start from an unconditional pipeline"
            )
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    conditional = UNet2DModel.from_config(
        {**config, "num_class_embeds": len(names) + 1, "class_embed_type": None}
    )
    missing, unexpected = conditional.load_state_dict(unet.state_dict(), strict=False)
    assert missing == ["class_embedding.weight"] and not unexpected, (missing, unexpected)
    with torch.no_grad():
        conditional.class_embedding.weight.zero_()
    conditional.register_to_config(**{NAMES_KEY: names})
    parameter = next(unet.parameters())
    if parameter.dtype != conditional.dtype:  # (a no-op `to(dtype)` warns in diffusers)
        conditional.to(dtype=parameter.dtype)
    return conditional.to(parameter.device).train(unet.training)


def check_conditioning(
    unet: UNet2DModel, conditioning: str | None, class_names: Sequence[str] | None, p_uncond: float
) -> list[str] | None:
    """The class names to condition on (None: unconditional), or one line on what is missing."""
    if conditioning not in (None, "class"):
        raise DifftuneError(f"model.conditioning={conditioning!r} is not one of class, null")
    if not 0.0 <= p_uncond < 1.0:
        raise DifftuneError(f"model.p_uncond={p_uncond} must be in [0, 1) (0.1 is usual)")
    if conditioning is None:
        if is_conditional(unet):
            raise DifftuneError(
                f"model.conditioning=null: the pretrained UNet is class-conditional (classes "
                f"{class_names_of(unet)}); set model.conditioning=class and data.label_column"
            )
        return None
    if class_names is None:
        raise DifftuneError(NEEDS_LABELS)
    if len(class_names) == 1:  # one class: the unconditional model, and CFG does nothing
        raise DifftuneError(
            f"model.conditioning=class: the data has one class ({', '.join(map(str, class_names))})"
            "; a class-conditional model needs at least 2 (synthetic: data.style=[photo,vintage])"
        )
    return [str(name) for name in class_names]


def drop_labels(
    labels: torch.Tensor, p_uncond: float, null_id: int, generator: torch.Generator
) -> torch.Tensor:
    """Each label replaced by the null label with probability `p_uncond` (CFG training)."""
    import torch

    if p_uncond <= 0:
        return labels
    draw = torch.rand(labels.shape, generator=generator, device=labels.device)
    return torch.where(draw < p_uncond, torch.full_like(labels, null_id), labels)
