"""Resuming: exact after a SIGKILL, resume=true finds the run's checkpoint, a changed lr is said."""

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict

from difftune.errors import DifftuneError
from difftune.run.resume import checkpoint_to_resume, run_key
from difftune.run.run_dir import LOCK
from difftune.run.train import train
from helpers.cli import CLI_RUN, RESUME_RUN, run_train
from helpers.compose import ROOT, compose_train, quick, shrink
from helpers.faults import run_with
from helpers.runs import losses, step_of, unet_weights


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    whole = run_train(tmp_path / "whole", *RESUME_RUN)
    assert whole.returncode == 0, whole.stderr[-2000:]
    expected = losses(tmp_path / "whole")
    weights = unet_weights(tmp_path / "whole")

    # killed at the start of step 7 (epoch 1, 3rd batch) and of step 10 (epoch 2, 3rd batch),
    # after the checkpoints of steps 6 and 9
    for kill_at, saved_at in ((7, 6), (10, 9)):
        killed_dir, resumed_dir = tmp_path / f"killed{kill_at}", tmp_path / f"resumed{kill_at}"
        killed = run_train(
            killed_dir, *RESUME_RUN, "+callbacks.kill._target_=helpers.faults.KillAt",
            f"+callbacks.kill.step={kill_at}",
        )  # fmt: skip
        assert killed.returncode == -signal.SIGKILL
        last = killed_dir / "checkpoints" / "last.ckpt"
        assert step_of(last) == saved_at and not (killed_dir / "pipeline").exists()

        resumed = run_train(resumed_dir, *RESUME_RUN, f"ckpt_path={last}")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "not resumable" not in resumed.stderr  # Lightning's mid-epoch warning is silent
        got = losses(resumed_dir)
        assert sorted(got) == list(range(saved_at, 12))
        assert max(abs(got[s] - expected[s]) for s in got) <= 1e-6
        after = unet_weights(resumed_dir)
        assert max((after[k] - weights[k]).abs().max().item() for k in weights) <= 1e-6


def test_resume_true_finds_the_newest_checkpoint_of_the_same_config(tmp_path, caplog):
    index = f"resume_dir={tmp_path / 'index'}"
    train(shrink(compose_train(index, output_dir=tmp_path / "first"), steps=4))

    # a relaunch: new run dir, longer, resume=true, no path given
    relaunch = shrink(compose_train(index, "resume=true", output_dir=tmp_path / "again"), steps=4)
    with open_dict(relaunch):
        relaunch.trainer.max_steps = 8  # how long it runs is not part of the experiment's key
        relaunch.trainer.log_every_n_steps = 1
    with caplog.at_level(logging.INFO, logger="difftune.run.resume"):
        train(relaunch)
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert f"resume=true: resuming from {first}" in caplog.text
    assert relaunch.ckpt_path is None and relaunch.resume  # the config stays as the user gave it
    assert sorted(losses(tmp_path / "again")) == [4, 5, 6, 7]  # continued, not restarted
    assert step_of(tmp_path / "again" / "checkpoints" / "last.ckpt") == 8


def test_resume_true_goes_on_with_the_run_that_wrote_last_not_the_longest(tmp_path, caplog):
    """A finished 4-step run, then the same config stopped at step 2 (killed, say): resume=true
    continues the second. Before, the checkpoint with the most steps won: the finished run was
    taken, "nothing left to train", and the stopped run was left as it was."""
    index = f"resume_dir={tmp_path / 'index'}"
    train(shrink(compose_train(index, output_dir=tmp_path / "finished"), steps=4))
    train(shrink(compose_train(index, output_dir=tmp_path / "stopped"), steps=2))
    relaunch = shrink(compose_train(index, "resume=true", output_dir=tmp_path / "new"), steps=4)
    with caplog.at_level(logging.INFO, logger="difftune.run.resume"):
        train(relaunch)
    stopped = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert f"resume=true: resuming from {stopped}" in caplog.text
    assert step_of(tmp_path / "new" / "checkpoints" / "last.ckpt") == 4  # steps 3 and 4 trained
    assert step_of(tmp_path / "finished" / "checkpoints" / "last.ckpt") == 4  # left alone


def test_resume_true_without_a_checkpoint_is_an_error(tmp_path):
    index = f"resume_dir={tmp_path / 'index'}"
    train(shrink(compose_train(index, output_dir=tmp_path / "first"), steps=2))
    other = shrink(compose_train(index, "resume=true", "model.optimizer.lr=1e-4",
                                 output_dir=tmp_path / "other"), steps=2)  # fmt: skip
    with pytest.raises(DifftuneError, match=r"^resume=true: no checkpoint of this configuration"):
        train(other)  # a different lr is a different experiment: never a silent fresh start
    assert not (tmp_path / "other" / "checkpoints").exists()


CORRUPT = ['{"runs": ["/a", ', '["/a"]', '{"runs": 3}', b"\xff\xfe\x00"]


@pytest.mark.parametrize("content", CORRUPT, ids=["truncated", "a list", "wrong type", "binary"])
def test_a_corrupt_resume_index_is_reported_and_rebuilt(content, tmp_path, caplog):
    index_dir = tmp_path / "index"
    cfg = quick(tmp_path / "first", f"resume_dir={index_dir}")
    index = index_dir / f"{run_key(cfg)}.json"
    index_dir.mkdir()
    index.write_bytes(content.encode() if isinstance(content, str) else content)
    with caplog.at_level(logging.WARNING, logger="difftune.run.resume"):
        train(cfg)  # a fresh run: never fatal
    (warning,) = [r.getMessage() for r in caplog.records if str(index) in r.getMessage()]
    assert "unreadable" in warning and "rebuilt" in warning
    assert json.loads(index.read_text()) == {"runs": [str(tmp_path / "first")]}

    again = quick(tmp_path / "again", f"resume_dir={index_dir}", "resume=true", steps=4)
    assert checkpoint_to_resume(again) == str(tmp_path / "first" / "checkpoints" / "last.ckpt")
    train(again)
    assert again.ckpt_path is None  # the config stays as the user gave it


def test_resume_true_finds_the_run_after_its_index_was_lost(tmp_path, caplog):
    """The runs beside the index dir (outputs/<task>/<date> beside outputs/<task>/resume) are
    found by their .hydra/config.yaml. Before: "no checkpoint ... (0 earlier runs)", exit 2."""
    index_dir = tmp_path / "resume"
    cfg = quick(tmp_path / "first", f"resume_dir={index_dir}")
    train(cfg)
    index = index_dir / f"{run_key(cfg)}.json"
    index.write_text("{corrupt")
    again = quick(tmp_path / "again", f"resume_dir={index_dir}", "resume=true", steps=4)
    with caplog.at_level(logging.WARNING, logger="difftune.run.resume"):
        assert checkpoint_to_resume(again) == str(tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert "rebuilt from the run dirs beside it (1 of this configuration)" in caplog.text
    train(again)  # indexed once built to fit: the rebuilt list and this run
    runs = json.loads(index.read_text())["runs"]
    assert sorted(runs) == [str(tmp_path / "again"), str(tmp_path / "first")]


def lrs(run_dir: Path) -> set[float]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("lr-AdamW")
    return {float(row.split(",")[column]) for row in lines[1:] if row.split(",")[column]}


def test_ckpt_path_with_another_lr_says_what_it_restores(tmp_path):
    train(quick(tmp_path / "first", "model.optimizer.lr=1e-5"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    changed = quick(tmp_path / "b", f"ckpt_path={last}", "model.optimizer.lr=1e-4", steps=4)
    with open_dict(changed):
        changed.trainer.log_every_n_steps = 1
    with pytest.warns(UserWarning, match="restores") as warned:
        train(changed)
    (message,) = [str(w.message) for w in warned if "restores" in str(w.message)]
    assert message.startswith(f"ckpt_path={last}: resuming restores the checkpoint's optimizer")
    assert "lr=1e-05" in message and "model.optimizer.lr=0.0001" in message
    assert lrs(tmp_path / "b") == {1e-5}  # what the warning says is what happened

    with warnings.catch_warnings(record=True) as same:
        warnings.simplefilter("always")
        train(quick(tmp_path / "c", f"ckpt_path={last}", "model.optimizer.lr=1e-5", steps=4))
    assert not [w for w in same if "restores" in str(w.message)]


@pytest.mark.slow
def test_resume_true_goes_on_in_the_run_dir_it_came_from(tmp_path):
    """Not in a new timestamped dir: one run dir, one metrics.csv, one loss curve."""
    first = tmp_path / "first"
    assert run_train(first, *CLI_RUN, "trainer.max_steps=4").returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "train.py", *CLI_RUN, "resume=true", "trainer.max_steps=6",
         f"resume_dir={tmp_path}/resume_index"],
        cwd=ROOT, env=env, text=True, capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert step_of(first / "checkpoints" / "last.ckpt") == 6
    assert "resume=true: resuming from" in (first / "train.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "resume_index"]


@pytest.mark.slow
def test_resume_true_into_a_run_that_is_still_going_is_refused_untouched(tmp_path):
    first = tmp_path / "first"
    assert run_train(first, *CLI_RUN, "trainer.max_steps=4").returncode == 0
    config = (first / ".hydra" / "config.yaml").read_bytes()
    with open(first / LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the run would, were it going
        result = subprocess.run(
            [sys.executable, "train.py", *CLI_RUN, "resume=true", "trainer.max_steps=6",
             f"resume_dir={tmp_path}/resume_index"],
            cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), text=True, capture_output=True,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: paths.output_dir={first}: in use by a run that is still going")
    assert (first / ".hydra" / "config.yaml").read_bytes() == config
    assert step_of(first / "checkpoints" / "last.ckpt") == 4


def test_last_ckpt_holds_the_final_step_where_lightnings_save_last_does_not(tmp_path):
    """Why `FinalCheckpoint` and not `ModelCheckpoint(save_last=True)`: a run that ends between
    two periods leaves Lightning's `last.ckpt` at the last period (a resume loses 2 steps here)."""
    cfg = shrink(
        compose_train(
            "callbacks.final_checkpoint.every_n_train_steps=4", output_dir=tmp_path / "a"
        ),
        steps=6,
    )
    lightning_last = ModelCheckpoint(
        dirpath=tmp_path / "lightning", save_last=True, save_top_k=0, every_n_train_steps=4
    )
    run_with(cfg, lightning_last)
    assert step_of(tmp_path / "a" / "checkpoints" / "last.ckpt") == 6
    assert step_of(tmp_path / "lightning" / "last.ckpt") == 4


def test_a_checkpoint_of_another_architecture_is_one_clear_error(tmp_path):
    small = shrink(compose_train(output_dir=tmp_path / "a"), steps=1)
    train(small)
    other = shrink(
        compose_train(
            "model=scratch", "model.unet.block_out_channels=[64,64]",
            "model.unet.down_block_types=[DownBlock2D,DownBlock2D]",
            "model.unet.up_block_types=[UpBlock2D,UpBlock2D]",
            f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}", output_dir=tmp_path / "b",
        ),
        steps=2,
    )  # fmt: skip
    with pytest.raises(DifftuneError) as err:
        train(other)
    message = str(err.value)
    assert "a checkpoint of another architecture" in message and "\n" not in message
    assert "e.g. unet.conv_in.weight is (32, 3, 3, 3) there, (64, 3, 3, 3) here" in message


def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    fake = tmp_path / "fake.ckpt"
    fake.write_text("x\n")
    with pytest.raises(DifftuneError) as err:
        train(shrink(compose_train(f"ckpt_path={fake}", output_dir=tmp_path / "run"), steps=1))
    assert str(err.value) == (
        f"ckpt_path={fake}: not a checkpoint (torch.save writes a zip archive, and this file is "
        "not one); pass a .ckpt that train.py wrote, e.g. outputs/<run>/checkpoints/last.ckpt"
    )


@pytest.mark.parametrize(
    ("override", "same"),
    [
        ("logger=tensorboard", True),
        ("callbacks.sample_grid.every_n_steps=7", True),
        ("trainer.val_check_interval=3", True),
        ("trainer.max_steps=900", True),
        ("export_dir=/elsewhere", True),
        ("seed=1", False),
        ("model.optimizer.lr=1e-3", False),
        ("data.image_size=64", False),
        ("trainer.accumulate_grad_batches=2", False),
    ],
)
def test_resume_key_ignores_what_does_not_change_the_training(override, same, tmp_path):
    """`resume=true` finds a run by this key: the same training, watched or cut differently."""
    base = run_key(compose_train(output_dir=tmp_path))
    assert (run_key(compose_train(override, output_dir=tmp_path)) == base) is same


def test_resuming_a_finished_run_leaves_its_metrics_and_export_as_they_are(tmp_path):
    run = tmp_path / "run"
    metrics = train(quick(run, "trainer.log_every_n_steps=1", steps=2))
    final = (run / "final_metrics.json").read_text()
    weights = (run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    again = train(quick(run, "trainer.log_every_n_steps=1", "resume=true", steps=2))
    assert again == pytest.approx(metrics)  # its own, not the {} of a fit with no step left
    assert (run / "final_metrics.json").read_text() == final
    assert (run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        weights
    )


def test_an_ema_run_resumed_from_its_checkpoint_exports_the_uninterrupted_average(tmp_path):
    """The average and its warm-up count (`n_averaged`, kept on the host too) come back."""
    every_3 = ["ema=default", "callbacks.model_checkpoint.every_n_train_steps=3"]
    train(quick(tmp_path / "whole", *every_3, steps=6))
    train(quick(tmp_path / "first", *every_3, steps=3))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train(quick(tmp_path / "resumed", *every_3, f"ckpt_path={last}", steps=6))
    expected, got = unet_weights(tmp_path / "whole"), unet_weights(tmp_path / "resumed")
    assert max((got[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
    first = unet_weights(tmp_path / "first")
    assert max((first[k] - expected[k]).abs().max().item() for k in expected) > 1e-4


def test_a_run_refused_before_it_fits_is_not_indexed(tmp_path):
    """A value a library refuses (Lightning's Timer here) stops the run before it fits: a later
    `resume=true` has nothing to find there, so the index does not list it."""
    index = tmp_path / "index"
    cfg = quick(tmp_path / "refused", f"resume_dir={index}", "trainer.max_time=abc")
    with pytest.raises(Exception, match="not a valid duration"):
        train(cfg)
    assert not list(index.glob("*.json"))
    train(quick(tmp_path / "fits", f"resume_dir={index}"))
    assert json.loads((index / f"{run_key(cfg)}.json").read_text()) == {
        "runs": [str(tmp_path / "fits")]
    }
