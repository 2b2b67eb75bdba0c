"""Non-finite losses: the batch's step skipped and counted (on every rank), or the run stopped."""

import csv
import json
import math

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import open_dict

from difftune.errors import DifftuneError
from difftune.run.final_metrics import read_final_metrics
from helpers.cli import RESUME_RUN, run_train
from helpers.compose import compose_train, shrink
from helpers.faults import run_with
from helpers.runs import step_of


class PoisonBatches(Callback):
    """Fills the images of the batches at steps `step` .. `step + times - 1` with NaN.

    Records the conv_in weights at the start of every batch, in order.
    """

    def __init__(self, step: int, times: int = 1) -> None:
        self.step, self.times = step, times
        self.weights: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        self.weights.append((step, pl_module.unet.conv_in.weight.detach().clone()))
        if self.step <= step < self.step + self.times:
            batch["images"].fill_(float("nan"))


class AdamState(Callback):
    """AdamW's step count and first moment of conv_in's weight at the end of training."""

    def on_train_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        state = optimizer.state[pl_module.unet.conv_in.weight]
        self.step, self.exp_avg = int(state["step"]), state["exp_avg"].clone()
        self.found_inf_left = hasattr(optimizer, "found_inf")


FUSED = pytest.mark.parametrize(
    "fused", [False, True], ids=["adamw (checked on the host)", "fused adamw (skips on device)"]
)


@FUSED
def test_a_nan_batch_is_skipped_counted_and_training_goes_on(cfg_train, tmp_path, fused):
    cfg = shrink(cfg_train, steps=6)
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
        cfg.model.optimizer.fused = fused or None
    poison, adam = PoisonBatches(step=2), AdamState()
    metrics = run_with(cfg, poison, adam)
    assert [step for step, _ in poison.weights] == [0, 1, 2, 3, 4, 5]
    # no update from the NaN batch (its step number passes, the weights stay)
    assert torch.equal(poison.weights[2][1], poison.weights[3][1])
    assert not torch.equal(poison.weights[3][1], poison.weights[4][1])
    assert adam.step == 5 and torch.isfinite(adam.exp_avg).all()  # the NaN step left no trace
    assert not adam.found_inf_left
    assert metrics["train/nonfinite_skipped"] == 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "pipeline" / "model_index.json").is_file()


class PoisonOneMicroBatch(Callback):
    """NaN in the first micro-batch of optimizer step `step` only; records weights per batch."""

    def __init__(self, step: int) -> None:
        self.step, self.done = step, False
        self.weights: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights.append((trainer.global_step, pl_module.unet.conv_in.weight.detach().clone()))
        if trainer.global_step == self.step and not self.done:
            batch["images"].fill_(float("nan"))
            self.done = True


def test_a_nan_micro_batch_drops_its_whole_accumulation_window(tmp_path):
    """The window's gradients are one sum: its finite micro-batch is dropped with the NaN one."""
    cfg = shrink(compose_train("trainer.accumulate_grad_batches=2", output_dir=tmp_path), steps=4)
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
    poison = PoisonOneMicroBatch(step=1)
    metrics = run_with(cfg, poison)
    assert [step for step, _ in poison.weights] == [0, 0, 1, 1, 2, 2, 3, 3]
    at = {step: w for step, w in reversed(poison.weights)}  # weights at each step's first batch
    assert torch.equal(at[1], at[2])  # no update from the window with the NaN micro-batch
    assert not torch.equal(at[0], at[1]) and not torch.equal(at[2], at[3])
    assert metrics["train/nonfinite_skipped"] == 1.0


@FUSED
def test_k_consecutive_nan_batches_stop_with_a_checkpoint(tmp_path, fused):
    cfg = shrink(
        compose_train("callbacks.nonfinite.max_consecutive=3", f"model.optimizer.fused={fused}",
                      output_dir=tmp_path),
        steps=20,
    )  # fmt: skip
    poison = PoisonBatches(step=2, times=100)  # every batch from step 2 on is NaN
    with pytest.raises(DifftuneError, match="3 consecutive non-finite losses up to step 4"):
        run_with(cfg, poison)
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 5  # stopped after the third
    assert all(torch.equal(poison.weights[2][1], w) for _, w in poison.weights[2:])
    assert not (tmp_path / "pipeline").exists()


@FUSED
def test_on_nonfinite_stop_stops_at_the_first(tmp_path, fused):
    cfg = shrink(
        compose_train("callbacks.nonfinite.on_nonfinite=stop", f"model.optimizer.fused={fused}",
                      output_dir=tmp_path),
        steps=20,
    )  # fmt: skip
    stop = r"non-finite loss at step 1 \(callbacks.nonfinite.on_nonfinite=stop\)"
    with pytest.raises(DifftuneError, match=stop):
        run_with(cfg, PoisonBatches(step=1))
    assert step_of(tmp_path / "checkpoints" / "last.ckpt") == 2
    # strict JSON (jq, pandas, JavaScript): the NaN loss is null, not Python's NaN token
    text = (tmp_path / "final_metrics.json").read_text()
    assert json.loads(text, parse_constant=reject)["train/loss"] is None
    assert math.isnan(read_final_metrics(tmp_path / "final_metrics.json")["train/loss"])


def reject(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


@pytest.mark.slow
def test_ddp_ranks_agree_to_skip_a_batch_that_is_nan_on_one_rank(tmp_path):
    """Rank 1's batch at step 2 is NaN, rank 0's is not: both skip (no hang, no divergence)."""
    result = run_train(tmp_path / "ddp", *RESUME_RUN, "hardware=ddp_cpu", "trainer.max_steps=4",
        "+callbacks.poison._target_=helpers.faults.PoisonOnRank", "+callbacks.poison.step=2",
        "+callbacks.poison.rank=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "ddp" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    skipped = [
        float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped")
    ]
    assert skipped and set(skipped) == {1.0}  # rank 0 counts one skip, its own loss was finite
    assert (tmp_path / "ddp" / "pipeline" / "model_index.json").is_file()
