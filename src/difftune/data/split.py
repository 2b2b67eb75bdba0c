"""The train/validation split: how many images are held out, and which."""

import warnings

import torch

#: `val_size: null` holds out this share of the images, at least VAL_FLOOR and at most VAL_CAP
VAL_FRACTION, VAL_FLOOR, VAL_CAP = 0.05, 4, 64


def held_out(n: int, val_size: int | None) -> int:
    """Validation images out of n: `val_size`, or by default 5 % with a floor and a cap; at
    least one image stays for training (a warning says so, and when val takes over a quarter)."""
    wanted = min(VAL_CAP, max(VAL_FLOOR, round(VAL_FRACTION * n))) if val_size is None else val_size
    held = min(wanted, n - 1)
    if held < wanted:
        warnings.warn(
            f"data.val_size={wanted} clamped to {held}: only {n} images "
            "(at least 1 is kept for training)",
            stacklevel=3,
        )
    elif val_size is not None and n > 1 and held > n // 4:
        warnings.warn(
            f"data.val_size={held} holds out {100 * held // n}% of the {n} images from "
            "training; data.val_size=null holds out 5% (4 to 64)",
            stacklevel=3,
        )
    return held


def split_indices(n: int, val_size: int | None, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (by `seed`) disjoint train/val index lists over the first n items."""
    held = held_out(n, val_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[held:]), sorted(perm[:held])
