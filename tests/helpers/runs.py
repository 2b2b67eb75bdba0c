"""What a run left behind, read back: checkpoint steps, losses, weights, sweep summaries."""

import csv
from pathlib import Path

import torch
from diffusers import DDPMPipeline
from safetensors.torch import load_file

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def step_of(ckpt: Path) -> int:
    """The optimizer step a Lightning checkpoint was saved at."""
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def losses(run_dir: Path) -> dict[int, float]:
    """step: train/loss, from the run's metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f)
                if r.get("train/loss")}  # fmt: skip


def unet_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The exported UNet's weights of a run dir (its pipeline/)."""
    return load_file(run_dir / "pipeline" / UNET_WEIGHTS)


def conv_in(pipeline_dir: Path) -> torch.Tensor:
    """The first convolution's weights of a saved pipeline, as diffusers loads it."""
    return DDPMPipeline.from_pretrained(str(pipeline_dir)).unet.conv_in.weight.detach().clone()


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """The rows of a sweep's summary.csv."""
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))
