"""A run never destroys another run's work: a used, claimed or unwritable run dir is refused."""

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

import difftune.run.train as train_module
from difftune.errors import DifftuneError
from difftune.run.train import train
from helpers.cli import CLI_RUN, one_line, run_train, start_train
from helpers.compose import compose_train, quick
from helpers.faults import read_only
from helpers.runs import UNET_WEIGHTS, step_of


def test_a_fresh_run_into_a_used_run_dir_is_refused_and_resuming_there_goes_on(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    index = f"resume_dir={tmp_path / 'index'}"
    train(quick(run, index))
    last = run / "checkpoints" / "last.ckpt"
    saved, exported = last.read_bytes(), (run / "pipeline" / UNET_WEIGHTS).read_bytes()

    with pytest.raises(DifftuneError) as err:  # a fresh run pointed at it
        train(quick(run, index))
    message = one_line(err)
    assert message.startswith(f"paths.output_dir={run} already holds a run's work")
    assert "checkpoints/last.ckpt" in message and "resume=true" in message
    train(quick(other, index))
    with pytest.raises(DifftuneError, match=r"already holds a run's work"):  # another run's ckpt
        train(quick(run, f"ckpt_path={other / 'checkpoints' / 'last.ckpt'}", index))
    assert last.read_bytes() == saved and (run / "pipeline" / UNET_WEIGHTS).read_bytes() == exported

    train(quick(run, f"ckpt_path={last}", index, steps=4))  # its own checkpoint: goes on
    assert step_of(last) == 4
    train(quick(run, "resume=true", index, steps=6))
    assert step_of(last) == 6


@pytest.mark.slow
def test_a_claimed_run_dir_refuses_a_second_run_until_its_holder_dies(tmp_path):
    run_dir = tmp_path / "run"
    first = start_train(
        run_dir, *CLI_RUN, "trainer.max_steps=6",
        "+callbacks.block._target_=helpers.faults.BlockAt", "+callbacks.block.step=3",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if not any(line.strip() == "BLOCKED" for line in first.stdout):
        pytest.fail(f"the first run ended before step 3 (exit {first.wait()})")
    last = run_dir / "checkpoints" / "last.ckpt"
    metrics = (run_dir / "metrics.csv").read_bytes()

    second = run_train(run_dir, *CLI_RUN, "trainer.max_steps=6")
    assert second.returncode == 2, second.stderr[-2000:]
    error = second.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: paths.output_dir={run_dir}: in use by a run")
    assert f"pid {first.pid}" in error
    assert step_of(last) == 2 and (run_dir / "metrics.csv").read_bytes() == metrics

    first.send_signal(signal.SIGKILL)  # the kernel drops its lock with it
    first.wait()
    resumed = run_train(run_dir, *CLI_RUN, "trainer.max_steps=6", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert step_of(last) == 6 and (run_dir / "pipeline" / "model_index.json").is_file()


def locations(tmp_path: Path) -> dict[str, tuple[list[str], Path, str]]:
    """case: (overrides, output dir, start of the error)."""
    ro, file, busy = tmp_path / "ro", tmp_path / "file", tmp_path / "busy"
    return {
        "read-only output dir": ([], ro / "run", f"paths.output_dir={ro / 'run'}: cannot write"),
        "read-only export dir": (
            [f"export_dir={ro / 'pipe'}"],
            tmp_path / "run",
            f"export_dir={ro / 'pipe'}: cannot",
        ),
        "output dir is a file": ([], file, f"paths.output_dir={file}: {file} is a file"),
        "export dir is a file": (
            [f"export_dir={file}"],
            tmp_path / "run",
            f"export_dir={file}: {file} is a file",
        ),
        "export dir is inside a file": (
            [f"export_dir={file / 'pipe'}"],
            tmp_path / "run",
            f"export_dir={file / 'pipe'}: {file}",
        ),
        "export dir holds other files": (
            [f"export_dir={busy}"],
            tmp_path / "run",
            f"export_dir={busy}: a directory that is not",
        ),
        "export dir is the run dir": (
            ["export_dir=${paths.output_dir}"],
            busy,
            f"export_dir={busy}: a directory that is not",
        ),
    }


CASES = list(locations(Path("/")))


@pytest.mark.parametrize("case", CASES)
def test_unwritable_locations_are_refused_before_training(case, tmp_path, monkeypatch):
    overrides, output_dir, start = locations(tmp_path)[case]
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("someone's work")
    (tmp_path / "ro").mkdir()
    cfg = compose_train(*overrides, f"resume_dir={tmp_path / 'index'}", output_dir=output_dir)

    def must_not_run(*args, **kwargs):
        raise AssertionError("training started in a location it cannot write")

    monkeypatch.setattr(train_module, "build", must_not_run)
    read_only(monkeypatch, tmp_path / "ro")
    with pytest.raises(DifftuneError) as err:
        train(cfg)
    message = one_line(err)
    assert message.startswith(start), message
    if "read-only" in case:
        assert os.strerror(errno.EROFS) in message
    assert (tmp_path / "busy" / "notes.txt").read_text() == "someone's work"
    assert (tmp_path / "file").read_text() == "not a directory"
