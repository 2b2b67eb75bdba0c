"""Lightning callbacks: sample grids, the loss curve, throughput, progress, the final checkpoint."""

from difftune.callbacks.checkpoint import FinalCheckpoint
from difftune.callbacks.loss_curve import LossCurve
from difftune.callbacks.progress import ProgressLine
from difftune.callbacks.sample_grid import SampleGrid
from difftune.callbacks.step_bar import StepProgressBar
from difftune.callbacks.throughput import Throughput

__all__ = [
    "FinalCheckpoint",
    "LossCurve",
    "ProgressLine",
    "SampleGrid",
    "StepProgressBar",
    "Throughput",
]
