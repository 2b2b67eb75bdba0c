"""A run's config from Python (a notebook), composed and checked as the command line does it."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from difftune.errors import DifftuneError


def _conf_dir() -> Path:
    """difftune/conf: a copy in an installed wheel, a link to the repository's conf/ in a
    checkout; where the link was not kept (git without symlinks), that conf/ itself."""
    packaged = Path(__file__).parent / "conf"
    return packaged.resolve() if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


CONF = _conf_dir()
ENTRY_POINTS = ("train", "sample")
WHERE_KEYS = ("paths.output_dir", "hydra.run.dir", "hydra.sweep.dir")
_handed_out: set[Path] = set()  # default run dirs given in this process (one per second else)


def _quoted(path: Path) -> str:
    """A path as one Hydra override value, whatever characters it holds."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def hydra_set_aside() -> Iterator[None]:
    """The caller's own Hydra (`initialize_config_dir` in a notebook) kept and put back."""
    theirs = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        yield
    finally:  # `instance()` each time: Hydra's initialize_* swap the singleton itself
        GlobalHydra.instance().clear()
        if theirs is not None:
            GlobalHydra.instance().initialize(theirs)


def _new_dir(name: str) -> Path:
    """outputs/<name>/<date>_<time> under the working directory, with _1, _2 ... when taken."""
    base = Path("outputs", name, datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).absolute()
    out, n = base, 0
    while out in _handed_out or out.exists():
        n += 1
        out = base.with_name(f"{base.name}_{n}")
    _handed_out.add(out)
    return out


def _resumed_dir(name: str, overrides: list[str]) -> Path | None:
    """With `resume=true`: the run dir holding this config's newest checkpoint, if any."""
    from difftune.run.resume import latest_checkpoint
    from difftune.run.run_dir import check_not_in_use

    if name != "train" or not any(o.lstrip("+") == "resume=true" for o in overrides):
        return None
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[*overrides, "paths.output_dir=null"])
    try:
        run_dir = latest_checkpoint(cfg).parent.parent
    except DifftuneError:
        return None  # train() says so in one line
    check_not_in_use(run_dir)
    return run_dir


def compose_config(
    name: str = "train", overrides: Iterable[str] = (), output_dir: str | Path | None = None
) -> DictConfig:
    """The config `python <name>.py <overrides>` runs (`name`: train or sample), its values
    checked as the command line checks them (a one-line `DifftuneError` before anything loads),
    writing to `output_dir` (default: a new outputs/<name>/<date>_<time> under the working
    directory, or with `resume=true` the run dir of the checkpoint it resumes, as on the command
    line). Run it with `difftune.run.train.train(cfg)` or
    `difftune.run.sample_images.sample_images(cfg)`."""
    from difftune.run.job_checks import JOB_CHECKS
    from difftune.run.preflight import check_command_line

    if name not in ENTRY_POINTS:
        raise DifftuneError(f"name={name!r}: no such entry point; valid: train, sample")
    if not (CONF / f"{name}.yaml").is_file():
        raise DifftuneError(
            f"{CONF / name}.yaml not found: difftune's configs (difftune/conf) are missing from "
            "this install; reinstall it (pip install <repo>, or pip install -e <repo>)"
        )
    if isinstance(overrides, str | bytes):
        raise DifftuneError(f"overrides={overrides!r}: pass a list of key=value strings")
    overrides = list(overrides)  # a generator is read once, here
    for override in overrides:
        if not isinstance(override, str):
            raise DifftuneError(f"overrides: {override!r} is not a key=value string")
        if override.startswith("-"):
            raise DifftuneError(
                f"overrides: {override!r} is a command-line flag; compose_config makes one run "
                "(for a sweep, compose one config per value, or run train.py -m)"
            )
        if override.split("=", 1)[0].lstrip("+~") in WHERE_KEYS:
            raise DifftuneError(
                f"{override}: where a run writes is compose_config's output_dir= argument"
            )
    with hydra_set_aside():
        if output_dir is None:
            out = _resumed_dir(name, overrides) or _new_dir(name)
        else:
            out = Path(output_dir).expanduser().absolute()
        where = [f"paths.output_dir={_quoted(out)}", f"hydra.run.dir={_quoted(out)}"]
        try:
            check_command_line(CONF, name, [*overrides, *where], JOB_CHECKS.get(name))
        except DifftuneError as err:  # the dir is this function's argument, not Hydra's key
            raise DifftuneError(str(err).replace("hydra.run.dir=", "output_dir=")) from None
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(name, overrides=[*overrides, where[0]])
