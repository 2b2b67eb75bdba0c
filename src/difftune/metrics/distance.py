"""KID and FID between generated and real images, on a choice of feature extractors.

`features` names the network that turns images into vectors; the distances are computed by
torchmetrics' `KernelInceptionDistance` / `FrechetInceptionDistance` on those vectors:

- ``"inception"``: torchmetrics' default 2048-d pool features of Inception-v3 (FID's original
  network). Needs torch-fidelity and its weights (a download); the only choice whose absolute
  values compare with published FID/KID numbers.
- ``"clip"``: the image embedding of an open_clip model (``model_name``, ``pretrained``), as in
  "CLIP-FID" (Kynkäänniemi et al. 2023). ``pretrained=None`` is random weights: tests only.
- ``"small"``: a fixed, randomly initialised conv net (seeded, no download), pooled to 192-d. It
  sees colour, contrast and texture statistics, which is enough to tell whether samples move toward
  a target style offline, but its values only compare with other ``small`` values.

KID and FID from non-Inception features are NOT comparable to published numbers (or across
feature extractors): use them to compare checkpoints of one run, or runs with the same features.
The metric names say which features were used: ``kid_small``, ``fid_clip``, ``kid_inception``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from difftune.errors import DifftuneError

FEATURES = ("small", "clip", "inception")


class SmallFeatures(nn.Module):
    """A deterministic random conv net: [0, 1] images (any size >= 8 px) to 192-d features.

    Three 3×3 conv layers (32, 64, 96 channels; the last two with stride 2), ReLU after each, with
    weights drawn from N(0, 2/fan_in) by a generator seeded with `seed`; every layer's output is
    global-average-pooled and the three poolings concatenated (colour and fine texture from the
    first layer, larger structure from the later ones). Frozen, eval mode, global RNG untouched.
    """

    name = "small"

    def __init__(self, seed: int = 0, widths: tuple[int, ...] = (32, 64, 96)) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers, in_ch = [], 3
        for i, out_ch in enumerate(widths):
            with torch.random.fork_rng(devices=[]):  # nn.Conv2d's own init draws from it
                conv = nn.Conv2d(in_ch, out_ch, 3, stride=1 if i == 0 else 2, padding=1)
            fan_in = in_ch * 9
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
                conv.weight.mul_(math.sqrt(2.0 / fan_in))
                conv.bias.zero_()
            layers.append(conv)
            in_ch = out_ch
        self.layers = nn.ModuleList(layers)
        self.num_features = sum(widths)
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] (or uint8 in [0, 255]) -> (N, num_features)."""
        x = _as_unit_float(images) * 2.0 - 1.0
        pooled = []
        for conv in self.layers:
            x = F.relu(conv(x))
            pooled.append(x.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1)


class ClipFeatures(nn.Module):
    """L2-normalised open_clip image embeddings of [0, 1] images (resized, CLIP-normalised)."""

    name = "clip"

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = "openai") -> None:
        super().__init__()
        from difftune.guidance.clip import OPENAI_MEAN, OPENAI_STD, load_clip

        self.model = load_clip(model_name, pretrained)
        visual = self.model.visual
        size = visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", OPENAI_STD)).view(1, 3, 1, 1))
        self.num_features = int(getattr(visual, "output_dim", 0)) or None
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] (or uint8) -> (N, embed_dim), unit norm."""
        x = _as_unit_float(images)
        x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        z = self.model.encode_image((x.clamp(0, 1) - self.mean) / self.std).float()
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class InceptionFeatures(nn.Module):
    """torchmetrics' FID Inception-v3 (torch-fidelity weights): [0, 1] images -> 2048-d."""

    name = "inception"
    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        hint = "use features=small (offline, no download) or features=clip"
        if not _TORCH_FIDELITY_AVAILABLE:
            raise DifftuneError(
                f"features=inception needs torch-fidelity (pip install torch-fidelity) and its "
                f"Inception weights (a download), and torch-fidelity is not installed; {hint}"
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except Exception as err:  # noqa: BLE001  (a failed download surfaces as many types)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DifftuneError(
                f"features=inception: could not load the Inception weights ({reason}); {hint}"
            ) from err

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] (or uint8) -> (N, 2048)."""
        if images.dtype != torch.uint8:
            images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(images).reshape(images.shape[0], -1)


def _as_unit_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def build_feature_extractor(
    features: str = "small",
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    seed: int = 0,
) -> nn.Module:
    """The extractor named `features` (one of FEATURES), frozen, in eval mode, on the CPU."""
    if features == "small":
        return SmallFeatures(seed=seed)
    if features == "clip":
        return ClipFeatures(model_name=model_name, pretrained=pretrained)
    if features == "inception":
        return InceptionFeatures()
    raise DifftuneError(f"features={features!r} is not one of {', '.join(FEATURES)}")


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 64
) -> torch.Tensor:
    """Features (N, d) of [0, 1] images, given as one tensor or an iterable of batches."""
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    out = [extractor(batch.to(device)).float().cpu() for batch in images]
    return torch.cat(out) if out else torch.empty(0)


class _Precomputed(nn.Module):
    """Identity 'feature extractor': lets torchmetrics take features that were computed already."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


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


def kid_from_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    subset_size: int | None = None,
    subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over `subsets` random subsets) between two feature sets (N, d).

    The subsets are drawn from a generator seeded by `seed` inside a forked RNG, so the value is
    reproducible and training's random stream is left alone.
    """
    size = resolve_subset_size(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features": they are ours already
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, d): >= 2 of each, and many more than d to mean much."""
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


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
    """KID (and FID) between real and generated [0, 1] images (N, 3, H, W).

    Returns e.g. ``{"kid_small": ..., "kid_small_std": ..., "fid_small": ...}``; the names carry
    the feature extractor, because values from different extractors do not compare (and only
    ``inception`` values compare with published ones).
    """
    extractor = build_feature_extractor(features) if isinstance(features, str) else features
    name = getattr(extractor, "name", type(extractor).__name__.lower())
    real_f = extract_features(extractor, real, batch_size)
    fake_f = extract_features(extractor, fake, batch_size)
    out: dict[str, float] = {}
    if kid:
        out[f"kid_{name}"], out[f"kid_{name}_std"] = kid_from_features(
            real_f, fake_f, subset_size, subsets, seed
        )
    if fid:
        out[f"fid_{name}"] = fid_from_features(real_f, fake_f)
    return out
