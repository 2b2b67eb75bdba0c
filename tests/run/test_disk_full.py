"""A full disk at a checkpoint, the export or a grid: one line, exit 2, the last good state kept."""

import errno
import os
import re
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from omegaconf import open_dict

from difftune.errors import DifftuneError
from difftune.hub.export import main as export_main
from difftune.run.train import train
from helpers.cli import CLI_RUN, FREE, one_line, one_line_exit_2, run_train
from helpers.compose import quick
from helpers.runs import conv_in, step_of


@pytest.mark.slow
def test_a_full_disk_at_a_periodic_checkpoint_is_one_line_exit_2_and_resumable(tmp_path):
    run_dir = tmp_path / "run"
    disk_full = ["+callbacks.disk._target_=helpers.faults.DiskFullAt", "+callbacks.disk.step=3"]
    result = run_train(run_dir, *CLI_RUN, "trainer.max_steps=6", *disk_full)
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert re.match(rf"error: cannot write checkpoint {run_dir}/checkpoints/\S+\.ckpt \(", error)
    assert "PytorchStreamWriter failed" in error and re.search(FREE, error)
    assert "(a short write, as on a full disk: " in error  # torch's text hides the errno
    kept = Path(re.search(r"resume with ckpt_path=(\S+\.ckpt)", error).group(1))
    assert step_of(kept) == 2
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    train(quick(run_dir, f"ckpt_path={kept}", f"resume_dir={tmp_path}/resume_index", steps=6))
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 6


@pytest.mark.parametrize(
    "safetensors_error",
    [  # its message on a full disk: safetensors 0.8 (written by a real full tmpfs), and < 0.6
        "Error while serializing: I/O error: No space left on device (os error 28)",
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
        'left on device" })',
    ],
)
def test_a_full_disk_during_the_export_keeps_the_previous_pipeline(
    tmp_path, monkeypatch, safetensors_error
):
    run = tmp_path / "run"
    train(quick(run))
    before = conv_in(run / "pipeline")

    def disk_full(*args, **kwargs):
        raise safetensors.SafetensorError(safetensors_error)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(DifftuneError) as err:
        train(quick(run, f"ckpt_path={last}", steps=4))
    monkeypatch.undo()
    message = one_line(err)
    assert message.startswith(f"cannot write the pipeline {run / 'pipeline'} (No space left on")
    assert re.search(FREE, message)
    command = f"python -m difftune.hub.export {last} --out {run / 'pipeline'}"
    assert message.endswith(command)
    assert torch.equal(conv_in(run / "pipeline"), before)  # the previous export, whole
    version = (run / "pipeline").readlink().name
    assert sorted(p.name for p in run.glob("*pipeline*")) == sorted(["pipeline", version])
    assert step_of(last) == 4

    export_main(command.split()[3:])  # the command it gives: the run's weights, exported
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(conv_in(run / "pipeline"), state["unet.conv_in.weight"])


def test_a_full_disk_while_writing_a_sample_grid_is_one_line_at_the_boundary(
    tmp_path, monkeypatch, capsys
):
    """Grids, curves and logs are written by many hands: the entry point's boundary maps a full
    or read-only disk behind any of them to one line; the checkpoints written so far stay."""
    import difftune.callbacks.sample_grid as sample_grid

    grid = tmp_path / "run" / "samples" / "step_000002.png"

    def full_disk(x, path, *args, **kwargs):
        if Path(path).name == grid.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return grid.parent  # the step-0 grid "is written"

    monkeypatch.setattr(sample_grid, "save_panels", full_disk)
    cfg = quick(tmp_path / "run", steps=4)
    with open_dict(cfg):
        cfg.callbacks.sample_grid.every_n_steps = 2
        cfg.callbacks.model_checkpoint.every_n_train_steps = 2
    line = one_line_exit_2(train, cfg, capsys)
    assert re.match(rf"error: cannot write {grid} \(No space left on device; {FREE}\)", line)
    assert line.endswith("free space, then run the same command with resume=true")
    assert step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") >= 2  # kept, resumable
