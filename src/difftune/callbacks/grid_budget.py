"""How much UNet work the sample grids may take, measured against the training they illustrate.

The unit is one UNet forward pass on one image: a grid costs images × steps × panels (a panel with
classifier-free guidance counts twice: its UNet batch holds the conditional and the null labels), a
training image about 3 (forward and backward). A 2-step smoke run of a 114M-parameter UNet with two
default grids (16 images × 40 steps) spends 13x its training work in grids; a 300-step run, a fifth.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_STEPS = 10  # DDIM still draws recognisable images in 10 steps
MIN_IMAGES = 4
TRAIN_COST = 3.0  # forward + backward of one training image, in forward passes
CFG_COST = 2  # a CFG panel: one UNet call on the doubled batch (conditional + null labels)


@dataclass(frozen=True)
class GridPlan:
    """Images and steps per grid, and the grids' estimated cost ÷ the training's as configured."""

    num_images: int
    num_inference_steps: int
    ratio: float

    def reduced(self, num_images: int, num_inference_steps: int) -> bool:
        """Whether this plan is cheaper than the configured grid."""
        return (self.num_images, self.num_inference_steps) != (num_images, num_inference_steps)


def plan_grids(
    num_images: int,
    num_inference_steps: int,
    num_grids: int,
    panels: int,
    train_images: float,
    max_ratio: float | None,
) -> GridPlan:
    """Fewer steps (down to 10), then fewer images (down to 4), until the grids' UNet work is at
    most `max_ratio` times the training's (`train_images` images left to train on); None: as is.
    `panels` is the UNet work per image and step of one grid: its panels, CFG ones counted twice."""
    grid_work = num_grids * panels * num_images * num_inference_steps
    ratio = grid_work / (TRAIN_COST * train_images) if train_images > 0 else float("inf")
    if max_ratio is None or ratio <= max_ratio:
        return GridPlan(num_images, num_inference_steps, ratio)
    budget = max_ratio / ratio  # the share of the configured grid work that is allowed
    steps = max(min(MIN_STEPS, num_inference_steps), int(num_inference_steps * budget))
    images = int(num_images * budget * num_inference_steps / steps)  # what the steps leave
    images = max(min(MIN_IMAGES, num_images), images)
    return GridPlan(min(images, num_images), min(steps, num_inference_steps), ratio)
