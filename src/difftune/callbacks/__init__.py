"""Lightning callbacks: sample grids, the loss curve, the end-of-training checkpoint."""

from difftune.callbacks.checkpoint import FinalCheckpoint
from difftune.callbacks.loss_curve import LossCurve
from difftune.callbacks.sample_grid import SampleGrid

__all__ = ["FinalCheckpoint", "LossCurve", "SampleGrid"]
