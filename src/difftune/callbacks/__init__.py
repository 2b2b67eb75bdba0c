"""Lightning callbacks: everything around the training step, in the order the config lists them."""

from difftune.callbacks.checkpoint import FinalCheckpoint
from difftune.callbacks.export import ExportPipeline
from difftune.callbacks.loss_curve import LossCurve
from difftune.callbacks.nonfinite import NonFiniteGuard
from difftune.callbacks.progress import ProgressLine
from difftune.callbacks.run_summary import RunSummary
from difftune.callbacks.sample_grid import SampleGrid
from difftune.callbacks.sigterm import StopTogether
from difftune.callbacks.skipped_images import SkippedImages
from difftune.callbacks.step_bar import StepProgressBar
from difftune.callbacks.throughput import Throughput

__all__ = [
    "ExportPipeline",
    "FinalCheckpoint",
    "LossCurve",
    "NonFiniteGuard",
    "ProgressLine",
    "RunSummary",
    "SampleGrid",
    "SkippedImages",
    "StepProgressBar",
    "StopTogether",
    "Throughput",
]
