"""What a run left behind, read back: checkpoint steps, losses, weights, sweep summaries."""

import csv
import json
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from diffusers import DDPMPipeline
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file

from difftune.run.objective import logged_metrics

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


def assert_metrics_were_known(run_dir: Path, cfg: DictConfig | None = None) -> None:
    """Every key of a run's final_metrics.json matches a name `logged_metrics` gave from its
    config (`.hydra/config.yaml` unless given) before it ran: what `objective=` is checked
    against."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml") if cfg is None else cfg
    patterns = logged_metrics(cfg)
    metrics = json.loads((run_dir / "final_metrics.json").read_text())
    unknown = [k for k in metrics if not any(fnmatchcase(k, p) for p in patterns)]
    assert metrics and not unknown, (unknown, patterns)
