"""A run's config from Python (a notebook), composed and checked as the command line does it."""

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from difftune.errors import DifftuneError

CONF = Path(__file__).resolve().parents[2] / "conf"  # the repository's conf/ (editable install)
ENTRY_POINTS = ("train", "sample")


def _quoted(path: Path) -> str:
    """A path as one Hydra override value, whatever characters it holds."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose_config(
    name: str = "train", overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> DictConfig:
    """The config `python <name>.py <overrides>` runs (`name`: train or sample), its values
    checked as the command line checks them (a one-line `DifftuneError` before anything loads),
    writing to `output_dir` (default: outputs/<name>/<date>_<time> under the working directory,
    as the command line's). Run it with `difftune.run.train.train(cfg)` or
    `difftune.run.sample_images.sample_images(cfg)`."""
    from difftune.run.job_checks import JOB_CHECKS
    from difftune.run.preflight import check_command_line

    if name not in ENTRY_POINTS:
        raise DifftuneError(f"name={name!r}: no such entry point; valid: train, sample")
    if not (CONF / f"{name}.yaml").is_file():
        raise DifftuneError(
            f"{CONF / name}.yaml not found: difftune's configs are not beside the package; "
            "install difftune from its repository (pip install -e <repo>)"
        )
    if isinstance(overrides, str):
        raise DifftuneError(f"overrides={overrides!r}: pass a list of key=value strings")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(output_dir if output_dir is not None else Path("outputs", name, stamp)).absolute()
    where = [f"paths.output_dir={_quoted(out)}", f"hydra.run.dir={_quoted(out)}"]
    try:
        check_command_line(CONF, name, [*overrides, *where], JOB_CHECKS.get(name))
    except DifftuneError as err:  # the dir is this function's argument, not Hydra's key
        raise DifftuneError(str(err).replace("hydra.run.dir=", "output_dir=")) from None
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=[*overrides, where[0]])
