"""KID (Bińkowski et al. 2018) and FID (Heusel et al. 2017) by torchmetrics, on a chosen network.

torchmetrics' `KernelInceptionDistance` / `FrechetInceptionDistance` run the feature module of
`difftune.metrics.features` on the images (`feature=<nn.Module>`) and keep the real images'
features across `reset()` (`reset_real_features=False`): real images go in once, generated ones
at every measurement. KID and FID from non-Inception features are NOT comparable to published
numbers (or across feature extractors): use them to compare checkpoints of one run, or runs with
the same features. The metric names say which features were used: ``kid_small``, ``fid_clip``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from difftune.errors import DifftuneError
from difftune.metrics.features import build_feature_extractor, feature_name


def resolve_subset_size(subset_size: int | None, n_real: int, n_fake: int) -> int:
    """KID's subset size: None -> half the smaller set; too large -> the smaller set (warns)."""
    n = min(n_real, n_fake)
    if n < 2:
        raise DifftuneError(
            f"KID needs at least 2 real and 2 generated images (got {n_real}, {n_fake})"
        )
    if subset_size is None:
        return max(2, n // 2)
    if subset_size > n:
        warnings.warn(
            f"KID subset_size={subset_size} is larger than the {n_real} real / {n_fake} generated "
            f"images: using subset_size={n}",
            UserWarning,
            stacklevel=2,
        )
        return n
    if subset_size < 2:
        raise DifftuneError(f"KID subset_size={subset_size} must be >= 2")
    return subset_size


def distance_metrics(
    extractor: nn.Module,
    n_real: int,
    n_fake: int,
    *,
    kid: bool = True,
    fid: bool = False,
    subset_size: int | None = None,
    subsets: int = 100,
) -> MetricCollection:
    """KID and/or FID on `extractor`'s features of [0, 1] images; real features survive `reset()`.

    `n_real` / `n_fake` are the image counts each measurement will see (KID's subset size is
    resolved against them). `update(images, real=...)` feeds images, `compute()` measures.
    """
    # one process measures (rank 0): syncing would wait for ranks that never update
    common = {"reset_real_features": False, "sync_on_compute": False}
    metrics: dict[str, Metric] = {}
    if kid:
        size = resolve_subset_size(subset_size, n_real, n_fake)
        with warnings.catch_warnings():  # "will save all extracted features": a few hundred
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")
            metrics["kid"] = KernelInceptionDistance(
                feature=extractor, subsets=subsets, subset_size=size, **common
            )
    if fid:  # each metric runs `extractor` itself: with FID, twice (cheap beside the sampling)
        metrics["fid"] = FrechetInceptionDistance(feature=extractor, **common)
    return MetricCollection(metrics, compute_groups=False)


def compute_distances(metrics: MetricCollection, name: str, seed: int = 0) -> dict[str, float]:
    """``kid_<name>``, ``kid_<name>_std`` (and ``fid_<name>``), then forget the generated images.

    KID's subsets come from `torch.randperm` on the CPU, seeded by `seed` inside a forked RNG:
    the value is reproducible and training's random stream is left alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        values = metrics.compute()
    metrics.reset()
    out: dict[str, float] = {}
    if "kid" in values:
        out[f"kid_{name}"], out[f"kid_{name}_std"] = (float(v) for v in values["kid"])
    if "fid" in values:
        out[f"fid_{name}"] = float(values["fid"])
    return out


def distribution_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    features: str | nn.Module = "small",
    kid: bool = True,
    fid: bool = False,
    subset_size: int | None = None,
    subsets: int = 100,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """KID (and FID) between real and generated [0, 1] images (N, 3, H, W), on `real`'s device.

    Returns e.g. ``{"kid_small": ..., "kid_small_std": ..., "fid_small": ...}``; the names carry
    the feature extractor, because values from different extractors do not compare (and only
    ``inception`` values compare with published ones).
    """
    extractor = build_feature_extractor(features) if isinstance(features, str) else features
    metrics = distance_metrics(
        extractor, real.shape[0], fake.shape[0], kid=kid, fid=fid, subset_size=subset_size,
        subsets=subsets,
    ).to(real.device)  # fmt: skip
    for images, is_real in ((real, True), (fake, False)):
        for batch in images.split(batch_size):
            metrics.update(batch.to(real.device), real=is_real)
    return compute_distances(metrics, feature_name(extractor), seed)
