"""Figures: the denoising progression (x_t beside x̂0) and the guidance-scaling schedules."""

from pathlib import Path
from types import ModuleType

import torch

from difftune.guidance import SCHEDULES
from difftune.pictures.images import grid_image


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the file-only Agg backend, imported on first use (it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_progression(steps: list[dict], path: str | Path, nrow: int = 4) -> Path:
    """One row per recorded step: the first `nrow` x_t (left) and the x̂0 they predict (right)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grids = [(grid_image(s["x_t"][:nrow], nrow), grid_image(s["x0"][:nrow], nrow)) for s in steps]
    aspect = grids[0][0].height / grids[0][0].width
    size = (8, (4 * aspect + 0.4) * len(steps))
    plt = pyplot()
    fig, axes = plt.subplots(len(steps), 2, figsize=size, squeeze=False)
    for row, step, pair in zip(axes, steps, grids, strict=True):
        for ax, grid, title in ((row[0], pair[0], "x_t"), (row[1], pair[1], "predicted x̂0")):
            ax.imshow(grid)
            ax.set_title(f"{title} (step {step['i']}, t={int(step['t'])})")
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_schedules(alphas_cumprod: torch.Tensor, path: str | Path) -> Path:
    """The four guidance-gradient weights w(ᾱ_t) over the training timesteps t."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, weight in SCHEDULES.items():
        ax.plot(weight(alphas_cumprod.float()).numpy(), label=name)
    ax.set(xlabel="timestep t", ylabel="gradient weight w(t)", title="Guidance scaling schedules")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
