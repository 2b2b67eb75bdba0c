"""A run never destroys another run's work: a used, claimed or unwritable run dir is refused."""

import errno
import fcntl
import os
import signal
import subprocess
from pathlib import Path

import pytest

import difftune.run.train as train_module
from difftune.errors import DifftuneError
from difftune.run.job_checks import JOB_CHECKS
from difftune.run.preflight import check_command_line
from difftune.run.run_dir import LOCK
from difftune.run.train import train
from helpers.cli import CLI_RUN, one_line, run_cli, run_train, start_train
from helpers.compose import CONF, compose_train, quick
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


def test_an_export_or_checkpoints_into_another_runs_dir_are_refused(tmp_path):
    victim = tmp_path / "victim"
    train(quick(victim))
    saved = {p: p.read_bytes() for p in victim.rglob("*") if p.is_file() and p.suffix != ".log"}
    for key, path in [
        ("export_dir", victim / "pipeline"),
        ("callbacks.model_checkpoint.dirpath", victim / "checkpoints"),
        ("callbacks.final_checkpoint.dirpath", victim / "checkpoints"),
    ]:
        with pytest.raises(DifftuneError) as err:
            train(quick(tmp_path / "mine", f"{key}={path}"))
        assert one_line(err) == (
            f"{key}={path}: inside another run's dir ({victim}), whose files it would replace; "
            "pass a path outside it"
        )
    assert {p: p.read_bytes() for p in saved} == saved


def job_check(*argv: str, script: str = "train") -> str:
    """The one line `train.py` / `sample.py` would print for `argv`, before Hydra starts."""
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, script, list(argv), JOB_CHECKS[script])
    return one_line(err)


def test_a_sweep_into_a_dir_of_finished_jobs_names_the_sweep_dir_key(tmp_path):
    job = tmp_path / "sweep" / "0"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_bytes(b"a finished job's checkpoint")
    message = job_check("-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert message.startswith(f"paths.output_dir={job} already holds a run's work")
    assert message.endswith("or write to a new dir (hydra.sweep.dir=...)")  # not hydra.run.dir


def test_a_held_run_dir_is_refused_before_hydra_writes_into_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text("pid 4242 on node7\n")
    with open(run_dir / LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running run holds it
        message = job_check(f"hydra.run.dir={run_dir}")
    assert message == (
        f"paths.output_dir={run_dir}: in use by a run that is still going (pid 4242 on node7); "
        "write to another dir (hydra.run.dir=...) or wait until it ends"
    )
    check_command_line(CONF, "train", [f"hydra.run.dir={run_dir}"], JOB_CHECKS["train"])  # free


def test_sample_py_refuses_a_dir_that_holds_files(tmp_path):
    (tmp_path / "grid.png").write_bytes(b"an earlier run's grid")
    assert job_check(f"hydra.run.dir={tmp_path}", script="sample") == (
        f"hydra.run.dir={tmp_path} already holds files (grid.png), which this run would "
        "overwrite; pass a new directory"
    )
    check_command_line(CONF, "sample", [f"hydra.run.dir={tmp_path / 'new'}"], JOB_CHECKS["sample"])
    failed = tmp_path / "failed"  # what a sample.py run that stopped on an error leaves
    (failed / ".hydra").mkdir(parents=True)
    (failed / "sample.log").write_text("error: guidance.scale=abc ...\n")
    check_command_line(CONF, "sample", [f"hydra.run.dir={failed}"], JOB_CHECKS["sample"])


@pytest.mark.parametrize(
    ("script", "sweep", "message"),
    [
        ("train", "model.optimizer.lr=1e-4,-1", "model.optimizer.lr=-1 must be a number > 0"),
        ("train", "trainer.max_steps=2,abc", "trainer.max_steps='abc' must be an integer >= 1"),
        ("sample", "num_images=1,0", "num_images=0 must be an integer >= 1"),
        # the data module's and the LightningModule's own checks, without data or a UNet
        ("train", "data.batch_size=16,0", "data.batch_size=0 must be an integer >= 1"),
        ("train", "data.num_images=48,0", "data.num_images=0 must be an integer >= 1"),
        ("train", "model.noise_offset=0,-1", "model.noise_offset=-1 must be >= 0"),
        ("train", "model.snr_gamma=5,-5", "model.snr_gamma=-5 must be > 0 (5 is usual) or null"),
        ("train", "model.compile=false,maybe", "model.compile=maybe must be true or false"),
    ],
)
def test_a_sweep_with_one_bad_job_fails_before_any_job_runs(script, sweep, message, tmp_path):
    """It used to train the jobs before the bad one, then fail that one with a traceback."""
    line = job_check("-m", sweep, f"hydra.sweep.dir={tmp_path / 'sweep'}", script=script)
    assert line.startswith(message), line
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hardware=1", "hardware=1: no such option; valid: cpu, ddp_cpu, gpu, multi_gpu, slurm"),
        ("=5", "=5: an override needs a key (key=value)"),
    ],
)
def test_a_group_given_a_number_or_no_key_is_one_line(override, message, tmp_path):
    assert job_check(override, f"hydra.run.dir={tmp_path / 'run'}") == message


@pytest.mark.slow
def test_refused_command_lines_leave_the_runs_files_as_they_were(tmp_path):
    """Hydra writes .hydra/ before the job starts: a refused run used to overwrite the run's
    config there (and sample.py its grids), so `difftune.hub.export` could not rebuild it."""
    run_dir = tmp_path / "run"
    first = run_train(run_dir, *CLI_RUN, "trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"}
    assert run_dir / ".hydra" / "config.yaml" in before

    fresh = run_train(run_dir, *CLI_RUN, "trainer.max_steps=2", "model.optimizer.lr=1e-3")
    assert fresh.returncode == 2
    assert (
        fresh.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: paths.output_dir={run_dir} already holds a run's work")
    )
    sampled = run_cli("num_images=1", f"hydra.run.dir={run_dir}", script="sample.py")
    assert sampled.returncode == 2
    assert (
        sampled.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: hydra.run.dir={run_dir} already holds files")
    )
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"}
    assert after == before
