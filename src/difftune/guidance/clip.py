"""CLIP guidance loss (Radford et al. 2021; cut-outs and spherical distance as in Crowson 2021)."""

from __future__ import annotations

import difflib
import os
import socket
import warnings
from collections.abc import Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchvision.transforms import v2

from difftune.guidance.options import GuidanceError, clip_prompts

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def spherical_dist_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance 2·arcsin(‖â − b̂‖/2)² between normalised embeddings."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (False in offline mode)."""
    import huggingface_hub.constants as hf

    if hf.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection((urlparse(hf.ENDPOINT).hostname, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _cached_weights(tag_cfg: dict) -> str | None:
    """The local HF-cache file of a pretrained tag, if it was downloaded before."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(tag_cfg.get("hf_hub", ""))
    for name in (filename,) if filename else HF_WEIGHT_FILES:
        path = try_to_load_from_cache(repo_id, name) if repo_id else None
        if isinstance(path, str):
            return path
    return None


def load_clip(
    model_name: str,
    pretrained: str | None,
    device: str | torch.device = "cpu",
    key: str = "guidance",
):
    """An open_clip model, eval mode, frozen; fails fast and says what to do offline. `key` is
    where the settings came from (`guidance`, `callbacks.kid`), named in the errors."""
    import open_clip  # here: it takes a second or two to import, and only CLIP guidance needs it

    known = open_clip.list_models()
    if not (model_name in known or str(model_name).startswith("hf-hub:")):
        near = difflib.get_close_matches(str(model_name), known, n=3)
        raise GuidanceError(
            f"{key}.model_name={model_name}: not an open_clip model"
            + (f"; did you mean {', '.join(near)}?" if near else "")
            + f" ({len(known)} in open_clip.list_models(), e.g. ViT-B-32, ViT-L-14)"
        )
    python = " (Python: ClipLoss(pretrained=...))" if key == "guidance" else ""
    if pretrained is None:
        warnings.warn(
            f"{key}.pretrained=null: open_clip {model_name} has RANDOM weights; CLIP with "
            "random weights means nothing (fine for tests only)",
            UserWarning,
            stacklevel=3,
        )
        kwargs: dict = {}
    elif os.path.isfile(pretrained):
        kwargs = {"pretrained": pretrained}
    else:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            raise GuidanceError(
                f"{key}.pretrained={pretrained!r}: neither an open_clip tag of {model_name} "
                f"({', '.join(open_clip.list_pretrained_tags_by_model(model_name))}) nor a file"
            )
        cached = _cached_weights(tag_cfg)
        if cached is None and not _hub_reachable():
            hub = tag_cfg.get("hf_hub", "").rstrip("/")
            raise GuidanceError(
                f"open_clip weights {model_name}/{pretrained!r} are not cached and the hub is "
                f"unreachable; download them (hf.co/{hub}) and pass "
                f"{key}.pretrained=/path/to/open_clip_pytorch_model.bin{python}"
            )
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        kwargs = {"pretrained": cached or pretrained, "force_quick_gelu": quick_gelu}
    try:
        model = open_clip.create_model(model_name, device=device, **kwargs)
    except RuntimeError as err:
        raise GuidanceError(
            f"{key}: could not load open_clip {model_name} ({err}); offline, pass "
            f"{key}.pretrained=/path/to/open_clip_pytorch_model.bin"
        ) from err
    return model.eval().requires_grad_(False)


class ClipLoss:
    """Weighted mean over prompts and cut-outs of the squared great-circle CLIP distance."""

    def __init__(
        self,
        prompt: str | Sequence[str],
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        n_cuts: int = 4,
        cut_batches: int = 1,
        weights: Sequence[float] | None = None,
        device: str | torch.device | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        prompts, weights = clip_prompts(prompt, weights, n_cuts, cut_batches)
        self.prompts, self.model_name, self.pretrained = prompts, model_name, pretrained
        self.n_cuts, self.cut_batches = int(n_cuts), int(cut_batches)
        total = abs(sum(weights))
        self.weights = torch.tensor([w / total for w in weights])
        self.device = None if device is None else torch.device(device)
        self.model = model.eval() if model is not None else load_clip(model_name, pretrained)
        if self.device is not None:
            self.model.to(self.device)
        visual = self.model.visual
        size = visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.cutouts = v2.Compose(
            [
                v2.RandomResizedCrop(size, antialias=True),
                v2.RandomAffine(5),
                v2.RandomHorizontalFlip(),
                v2.Normalize(mean=cfg.get("mean", OPENAI_MEAN), std=cfg.get("std", OPENAI_STD)),
            ]
        )
        self._text_features: torch.Tensor | None = None

    @property
    def label(self) -> str:
        """What a picture's caption calls this loss."""
        return "CLIP " + " + ".join(repr(p) for p in self.prompts)

    def __repr__(self) -> str:
        return (
            f"ClipLoss(prompt={self.prompts!r}, model_name={self.model_name!r}, "
            f"pretrained={self.pretrained!r}, n_cuts={self.n_cuts})"
        )

    @property
    def _param(self) -> torch.Tensor:
        return next(self.model.parameters())

    def text_features(self, device: torch.device) -> torch.Tensor:
        """The prompt embeddings, computed once (on the device of the first images seen)."""
        if self.device is None and self._param.device != device:
            self.model.to(device)
        if self._text_features is None or self._text_features.device != self._param.device:
            import open_clip

            tokens = open_clip.get_tokenizer(self.model_name)(self.prompts).to(self._param.device)
            with torch.no_grad():
                self._text_features = self.model.encode_text(tokens).float()
        return self._text_features

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """The loss of a batch x̂0 (B×3×H×W, model space [-1, 1]), all cuts in one CLIP pass."""
        text = self.text_features(x0.device)
        param = self._param
        x01 = (x0.to(param.device) + 1) / 2  # model space [-1, 1] -> [0, 1] before normalising
        # each cut draws its own crop/affine/flip (shared by the batch), then one batched encode
        cuts = torch.cat([self.cutouts(x01) for _ in range(self.n_cuts)]).to(param.dtype)
        if self.cut_batches == 1:
            image_features = self.model.encode_image(cuts)
        else:  # recompute in backward: activations of one chunk alive at a time
            chunks = cuts.chunk(self.cut_batches)
            image_features = torch.cat(
                [checkpoint(self.model.encode_image, c, use_reentrant=False) for c in chunks]
            )
        dists = spherical_dist_loss(image_features.float()[:, None], text[None])  # N×K
        return (dists.mean(0) * self.weights.to(dists.device)).sum()
