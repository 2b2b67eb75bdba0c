"""Each job of a command line, checked before Hydra starts any: its values, and its run dir.

Hydra writes `.hydra/` into a job's dir before the job runs, so a run dir that another run holds
is refused here, before that write; and a `-m` sweep's bad value fails the command at once, not
when the sweep reaches its job after the earlier ones trained.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

from difftune.errors import DifftuneError
from difftune.run.disk import check_writable


def _in_job_dir(cfg: DictConfig, job_dir: Path) -> None:
    """`${hydra:runtime.output_dir}` (`paths.output_dir`) as the job will see it."""
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(job_dir)


def check_train_job(cfg: DictConfig, job_dir: Path, key: str) -> None:
    """Writable, not held by a running run, not another run's work; then the config's values."""
    import hydra

    from difftune.run.build_errors import config_error  # here: `--help` needs none of these
    from difftune.run.checks import check_train_config
    from difftune.run.cli import user_error
    from difftune.run.run_dir import check_not_in_use, reuse_refusal  # (Lightning: seconds)

    check_writable(key, job_dir, job_dir)
    check_not_in_use(job_dir)
    _in_job_dir(cfg, job_dir)
    if job_dir.is_dir():
        refusal = reuse_refusal(cfg, job_dir, key)
        if refusal is not None:
            raise DifftuneError(refusal)
    with warnings.catch_warnings():  # the job itself warns, once
        warnings.simplefilter("ignore")
        try:
            check_train_config(cfg)
            hydra.utils.instantiate(cfg.data)  # its constructor's checks (no data is read)
        except DifftuneError:
            raise
        except Exception as err:  # a library (or a constructor of ours) rejected a value: its
            cause = config_error(err, cfg) or user_error(err)  # one line, where there is one;
            if cause is not None:  # else the job meets it again, inside the entry point's
                raise cause from None  # boundary


FAILED_RUN_LEFT = (".hydra", "sample.log")  # what a sample.py run that failed leaves


def check_sample_job(cfg: DictConfig, job_dir: Path, key: str) -> None:
    """A new (or empty) dir: `sample.py` writes `grid.png`, `images/` and `.hydra/` there."""
    from difftune.run.sample_checks import check_sample_config, class_rows, sampled_unet_config

    check_writable(key, job_dir, job_dir)
    entries = sorted(p.name for p in job_dir.iterdir()) if job_dir.is_dir() else []
    entries = [e for e in entries if e not in FAILED_RUN_LEFT]  # a failed run's: rerun there
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise DifftuneError(
            f"{key}={job_dir} already holds files ({shown}), which this run would overwrite; "
            "pass a new directory"
        )
    _in_job_dir(cfg, job_dir)
    check_sample_config(cfg)
    if cfg.get("plot") is None:  # plot=schedules reads the scheduler alone
        class_rows(cfg, sampled_unet_config(cfg)[0])


JOB_CHECKS: dict[str, Callable[[DictConfig, Path, str], None]] = {
    "train": check_train_job,
    "sample": check_sample_job,
}
