"""A training step reads no tensor on the host. On a GPU each read (`.item()`, `float(t)`,
`bool(t)`) waits for the GPU to finish the step, and the host cannot queue the next step
meanwhile: the GPU idles through Lightning's hooks, the next batch's transfer and its launches."""

import sys
from collections import Counter

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import open_dict

from helpers.compose import compose_train, shrink
from helpers.faults import run_with

READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
WATCHED = (4, 9)  # steps without a periodic callback (grids, curves, progress lines, throughput)


class HostReads(Callback):
    """Counts tensor reads on the host by where they are called from (file:line), in steps
    `WATCHED[0]` .. `WATCHED[1] - 1`, from Lightning or difftune (not its data pipeline, which
    runs in DataLoader workers on a GPU machine; not torch's own internals)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sites: Counter[str] = Counter()
        self.watching = False
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))

    def _counted(self, read):
        def counted(tensor, *args, **kwargs):
            if self.watching:
                frame = sys._getframe(1)
                caller = frame.f_code.co_filename
                ours = "/difftune/" in caller and "/difftune/data/" not in caller
                if (ours or "/lightning/" in caller or caller.endswith("swa_utils.py")) and (
                    caller.endswith("callbacks/nonfinite.py"),
                    frame.f_code.co_name,
                ) != (True, "_read"):  # the guard's host copy of its flag, once an event says
                    self.sites[f"{caller}:{frame.f_lineno}"] += 1  # the GPU has written it
            return read(tensor, *args, **kwargs)

        return counted

    def on_train_batch_start(self, trainer, *args) -> None:
        self.watching = WATCHED[0] <= trainer.global_step < WATCHED[1]

    def on_train_end(self, *args) -> None:
        self.watching = False


@pytest.mark.parametrize(
    "overrides", [(), ("ema=default",)], ids=["train.py's callbacks", "with EMA"]
)
def test_a_training_step_reads_no_tensor_on_the_host(tmp_path, monkeypatch, overrides):
    """With the fused AdamW, whose non-finite steps are skipped on the device."""
    cfg = shrink(
        compose_train("model.optimizer.fused=true", *overrides, output_dir=tmp_path), steps=12
    )
    with open_dict(cfg):
        cfg.callbacks.sample_grid.every_n_steps = 10
        cfg.callbacks.loss_curve.every_n_steps = 10
        cfg.callbacks.progress.every_n_steps = 10
    reads = HostReads(monkeypatch)
    run_with(cfg, reads)
    assert not reads.sites, dict(reads.sites)
