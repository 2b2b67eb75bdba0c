"""`resume=true`: find this experiment's newest checkpoint, whichever run directory holds it.

Runs of the same configuration (everything except where it writes, how long it runs and whether
it resumes) share a key; each run adds its directory to `<resume_dir>/<key>.json` once it is
built to fit (one refused before is not added), and `resume=true` takes, among those directories
(and its own run dir), the one that wrote a checkpoint last, and in it the checkpoint with the
most steps. Finding none is an error, never a silent fresh start. An index is a cache: one that
cannot be read is reported, rebuilt from the run dirs beside it (their `.hydra/config.yaml`) and
rewritten, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from difftune.errors import DifftuneError
from difftune.run.final_metrics import read_final_metrics

log = logging.getLogger(__name__)

# keys that do not change what is trained: where it goes, for how long, whether it resumes, and
# what watches it (loggers, grids, checkpoint periods, validation)
VOLATILE = (
    "paths", "hydra", "resume", "resume_dir", "ckpt_path", "export_dir", "push_to_hub", "hub",
    "logger", "callbacks", "objective",
)  # fmt: skip
VOLATILE_TRAINER = (
    "max_steps", "max_epochs", "max_time", "enable_progress_bar", "default_root_dir",
    "log_every_n_steps", "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps",
    "enable_model_summary",
)  # fmt: skip


def run_key(cfg: DictConfig) -> str:
    """12 hex digits naming the configuration (interpolations unresolved, volatile keys dropped)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for key in VOLATILE:
        tree.pop(key, None)
    for key in VOLATILE_TRAINER:
        tree.get("trainer", {}).pop(key, None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _index(cfg: DictConfig) -> Path:
    return Path(cfg.resume_dir) / f"{run_key(cfg)}.json"


def _runs(index: Path) -> list[str]:
    """The run dirs an index lists; an unreadable one is reported and lists none."""
    if not index.is_file():
        return []
    try:
        runs = json.loads(index.read_text())["runs"]
        if not isinstance(runs, list) or not all(isinstance(run, str) for run in runs):
            raise TypeError(f"'runs' is a {type(runs).__name__}, not a list of paths")
    except (OSError, ValueError, KeyError, TypeError) as err:
        runs = _scan(index)
        log.warning(
            "resume index %s is unreadable (%s: %s); rebuilt from the run dirs beside it (%d of "
            "this configuration) and this run",
            index, type(err).__name__, (str(err).splitlines() or [""])[0][:200], len(runs),
        )  # fmt: skip
    return runs


def _scan(index: Path) -> list[str]:
    """The run dirs under the index's parent (outputs/<task_name>/) whose `.hydra/config.yaml`
    has the index's key: what a lost index listed, where runs went to the default dirs."""
    runs = []
    for config in sorted(index.parent.parent.glob("*/.hydra/config.yaml")):
        try:
            key = run_key(OmegaConf.load(config))
        except Exception:  # noqa: BLE001 - a config we cannot read is not this configuration's
            continue
        if key == index.stem:
            runs.append(str(config.parent.parent.resolve()))
    return runs


def register_run(cfg: DictConfig) -> None:
    """Add this run's directory to its configuration's index (atomic rewrite)."""
    index = _index(cfg)
    index.parent.mkdir(parents=True, exist_ok=True)
    runs = _runs(index)
    run_dir = str(Path(cfg.paths.output_dir).resolve())
    if run_dir not in runs:
        runs.append(run_dir)
    tmp = index.with_name(f".{index.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    tmp.replace(index)


def _step(ckpt: Path) -> int:
    import torch  # here: the entry point's resume lookup runs before anything heavy is needed

    try:
        return int(
            torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception:  # a checkpoint that cannot be read is not a candidate
        return -1


def latest_checkpoint(cfg: DictConfig) -> Path:
    """Among this configuration's runs, the one that wrote a readable checkpoint last (a run
    killed after an earlier one finished is the one to go on with); in it, the checkpoint with
    the most steps."""
    runs = _runs(_index(cfg))
    own = OmegaConf.select(cfg, "paths.output_dir", default=None)  # None before Hydra runs
    dirs = {*runs, str(Path(own).resolve())} if own else set(runs)
    found = [c for run in dirs for c in Path(run).glob("checkpoints/*.ckpt")]
    readable = [(c.stat().st_mtime, _step(c), c) for c in found]
    readable = [(mtime, step, c) for mtime, step, c in readable if step >= 0]
    last_write: dict[Path, float] = {}
    for mtime, _, c in readable:
        last_write[c.parent] = max(mtime, last_write.get(c.parent, mtime))
    scored = sorted(((last_write[c.parent], step, mtime, c) for mtime, step, c in readable),
                    reverse=True)  # fmt: skip
    if not scored:
        raise DifftuneError(
            f"resume=true: no checkpoint of this configuration (key {run_key(cfg)}) under "
            f"{cfg.resume_dir} ({len(runs)} earlier runs); drop resume=true to start fresh, or "
            "pass ckpt_path=..."
        )
    return scored[0][3]


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and str(HydraConfig.get().mode).endswith("MULTIRUN")


def own_checkpoint(cfg: DictConfig) -> Path | None:
    """A sweep job's own newest checkpoint (its jobs differ in keys the index leaves out, e.g.
    max_steps, so another job's is never taken), or None: the job has not run yet."""
    own = Path(cfg.paths.output_dir)
    scored = sorted(
        ((_step(c), c.stat().st_mtime, c) for c in own.glob("checkpoints/*.ckpt")), reverse=True
    )
    return scored[0][2] if scored and scored[0][0] >= 0 else None


def checkpoint_to_resume(cfg: DictConfig) -> str | None:
    """The checkpoint this run starts from: `ckpt_path`, or with `resume=true` the newest of this
    configuration's runs (in a `-m` sweep: of the job's own dir, where a job that never ran
    starts fresh, so one command finishes an interrupted sweep)."""
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume") and _in_multirun():
        found = own_checkpoint(cfg)
        ckpt_path = None if found is None else str(found)
        if found is None:
            log.info("resume=true: no checkpoint in this job's dir yet; the job starts fresh")
        else:
            log.info("resume=true: resuming from %s", ckpt_path)
    elif cfg.get("resume"):
        ckpt_path = str(latest_checkpoint(cfg))
        log.info("resume=true: resuming from %s", ckpt_path)
    return ckpt_path


def index_this_run(cfg: DictConfig) -> None:
    """Rank 0, once everything is built for the fit: add the run to its configuration's index,
    so that a later `resume=true` finds it (a run refused before it could start is not added)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only  # here: `--help` needs none

    if rank_zero_only.rank == 0:
        register_run(cfg)


def finished_metrics(cfg: DictConfig, ckpt_path: str | None) -> dict[str, float] | None:
    """A run resumed in its own dir from a checkpoint at its `max_steps`: it is done, and its
    `final_metrics.json` (which a fit of no steps would empty) is what it returns; else None."""
    max_steps = cfg.trainer.get("max_steps") or -1
    own = Path(cfg.paths.output_dir).resolve()
    final = own / "final_metrics.json"
    if ckpt_path is None or max_steps < 0 or not final.is_file():
        return None
    if Path(ckpt_path).resolve().parent.parent != own or _step(Path(ckpt_path)) < max_steps:
        return None
    log.info("%s is at step %d, this run's max_steps: nothing left to train", ckpt_path, max_steps)
    return read_final_metrics(final)


def continue_in_its_dir(config_dir: Path, config_name: str, argv: list[str]) -> list[str]:
    """`argv` plus `hydra.run.dir=<run>` when a plain `resume=true` run has a checkpoint to go on
    from, so the resumed run writes into the run dir it came from (one metrics.csv, one curve)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    keys = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    wanted = any(a.lstrip("+") == "resume=true" for a in argv)
    if not wanted or "hydra.run.dir" in keys or {"-m", "--multirun"} & set(argv):
        return argv
    previous = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=argv, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            ckpt = latest_checkpoint(cfg)
    except DifftuneError:
        return argv  # train() says it in one line
    finally:
        HydraConfig.instance().cfg = previous
    from difftune.run.cli import exit_2
    from difftune.run.run_dir import check_not_in_use

    run_dir = ckpt.parent.parent
    try:  # Hydra would write this run's .hydra/ into it before the run's own claim refuses it
        check_not_in_use(run_dir)
    except DifftuneError as err:
        exit_2(err)
    return [*argv, f"hydra.run.dir={run_dir}"]
