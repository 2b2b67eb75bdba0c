"""Feature networks for KID and FID: images in [0, 1] to (N, d) vectors, torchmetrics' `feature=`.

- ``"inception"``: torchmetrics' 2048-d pool features of Inception-v3 (FID's original network).
  Needs torch-fidelity and its weights (a download); the only choice whose absolute values compare
  with published FID/KID numbers.
- ``"clip"``: the image embedding of an open_clip model (``model_name``, ``pretrained``), as in
  "CLIP-FID" (Kynkäänniemi et al. 2023). ``pretrained=None`` is random weights: tests only.
- ``"small"``: a fixed, randomly initialised conv net (seeded, no download), pooled to 192-d. It
  sees colour, contrast and texture statistics, which is enough to tell whether samples move toward
  a target style offline, but its values only compare with other ``small`` values.

Each module has `num_features` (torchmetrics' FID sizes its state by it) and a `name`, which the
metric names carry: ``kid_small``, ``fid_clip``, ``kid_inception``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
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

        self.model = load_clip(model_name, pretrained, key="callbacks.kid")
        visual = self.model.visual
        size = visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", OPENAI_STD)).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)
        dim = int(getattr(visual, "output_dim", 0) or 0)  # towers without it: one probe image
        with torch.no_grad():
            self.num_features = dim or self(torch.zeros(1, 3, *self.size)).shape[-1]

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

    def __init__(self, key: str = "features") -> None:
        super().__init__()
        hint = f"use {key}=small (offline, no download) or {key}=clip"
        if not _TORCH_FIDELITY_AVAILABLE:
            raise DifftuneError(
                f"{key}=inception needs torch-fidelity (pip install torch-fidelity) and its "
                f"Inception weights (a download), and torch-fidelity is not installed; {hint}"
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except Exception as err:  # noqa: BLE001  (a failed download surfaces as many types)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DifftuneError(
                f"{key}=inception: could not load the Inception weights ({reason}); {hint}"
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
    key: str = "features",
) -> nn.Module:
    """The extractor named `features` (one of FEATURES), frozen, in eval mode, on the CPU; its
    errors name the setting as `key` (`callbacks.kid.features` in a run)."""
    if features == "small":
        return SmallFeatures(seed=seed)
    if features == "clip":
        return ClipFeatures(model_name=model_name, pretrained=pretrained)
    if features == "inception":
        return InceptionFeatures(key=key)
    raise DifftuneError(f"{key}={features!r} is not one of {', '.join(FEATURES)}")


def feature_name(features: str | nn.Module) -> str:
    """The name metric names carry (`kid_<name>`): a FEATURES name or the module's `name`."""
    if isinstance(features, str):
        return features
    return getattr(features, "name", type(features).__name__.lower())
