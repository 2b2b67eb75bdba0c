"""The train/validation split: how many images are held out, and which."""

import warnings

import torch

from difftune.data.options import check_val_size

#: `val_size: null` holds out this share of the images, at least VAL_FLOOR and at most VAL_CAP
VAL_FRACTION, VAL_FLOOR, VAL_CAP = 0.05, 4, 64


def held_out(n: int, val_size: int | None) -> int:
    """Validation images out of n: `val_size`, or by default 5 % with a floor and a cap; at
    least one image stays for training. An explicit `val_size` that leaves none is an error; a
    warning says when the default is clamped, when an explicit `val_size` holds out over a
    quarter, and when the default holds out over half."""
    setting = f"data.val_size={'null' if val_size is None else val_size}"
    check_val_size(n, val_size)
    wanted = min(VAL_CAP, max(VAL_FLOOR, round(VAL_FRACTION * n))) if val_size is None else val_size
    held = min(wanted, n - 1)
    images = f"{n} image{'s' if n != 1 else ''}"
    if held < wanted:
        warnings.warn(
            f"{setting}: only {images}, so {held} held out for validation instead of {wanted} "
            "(at least 1 is kept for training)",
            stacklevel=3,
        )
    elif n > 1 and held > (n // 4 if val_size is not None else n // 2):
        hint = "null holds out 5% (4 to 64)" if val_size is not None else "N holds out N"
        warnings.warn(
            f"{setting} holds out {held} of the {images} ({100 * held // n}%) from training; "
            f"data.val_size={hint}",
            stacklevel=3,
        )
    return held


def split_indices(n: int, val_size: int | None, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (by `seed`) disjoint train/val index lists over the first n items."""
    held = held_out(n, val_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[held:]), sorted(perm[:held])
