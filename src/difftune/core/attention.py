"""The attention kernel of a `UNet2DModel`'s self-attention blocks, and TF32 matmuls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from difftune.errors import DifftuneError

if TYPE_CHECKING:
    import torch

# sdpa: torch's scaled_dot_product_attention (flash / memory-efficient kernels where they apply);
# classic: diffusers' explicit softmax(QKᵀ/√d)V, the reference the others are compared with.
# Names only: the config checks import neither torch nor diffusers
ATTENTION = ("sdpa", "classic")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # high: TF32 float32 matmuls on Ampere and later


def check_attention(attention: object) -> str:
    """`model.attention`, checked: one of ATTENTION's names."""
    if attention not in ATTENTION:
        raise DifftuneError(
            f"model.attention={attention!r}: expected one of {', '.join(ATTENTION)}"
        )
    return str(attention)


def set_attention(unet: torch.nn.Module, attention: str) -> None:
    """Give every attention block of `unet` the named processor (weights untouched)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    processors = {"sdpa": AttnProcessor2_0, "classic": AttnProcessor}
    processor = processors[check_attention(attention)]()
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)


def check_matmul_precision(precision: object) -> str | None:
    """`matmul_precision`, checked: null (torch's default) or one of MATMUL_PRECISIONS."""
    if precision is not None and precision not in MATMUL_PRECISIONS:
        raise DifftuneError(
            f"matmul_precision={precision!r}: expected null or one of "
            f"{', '.join(MATMUL_PRECISIONS)} (high: TF32 matmuls on GPUs)"
        )
    return precision
