"""Compose every job a command line asks for before Hydra starts any: bad overrides in one line.

Hydra reports an unknown key or option in several lines, and a multirun reports it only when it
reaches the job. `check_command_line` composes each combination of the sweep up front and turns
the first failure into one line naming the override, the value and what would be valid.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from difftune.errors import DifftuneError
from difftune.run.fresh_dir import choosing_only

#: command-line keys of earlier versions -> where they live now
MOVED = {
    "on_nonfinite": "callbacks.nonfinite.on_nonfinite",
    "max_consecutive_nonfinite": "callbacks.nonfinite.max_consecutive",
}
#: demo.py's starting values of the page, which moved under `page.` (`scheduler=` and
#: `guidance=` are config groups in the shared conf dir, so the old keys could not be set)
PAGE_KEYS = ("guidance", "colour", "prompt", "scale", "through_unet", "schedule", "scheduler",
             "num_inference_steps", "num_images", "seed")  # fmt: skip
SUBMITIT_HINT = "pip install hydra-submitit-launcher (it is in difftune's dependencies)"


def cuda_available() -> bool:
    """`torch.cuda.is_available()`, torch imported for a GPU config only (`--help` and bad input
    need none of it)."""
    import torch

    return torch.cuda.is_available()


def check_hardware(cfg: DictConfig, multirun: bool = False) -> None:
    """A GPU config needs a visible GPU; DDP over several devices in a `-m` sweep needs torchrun."""
    trainer = cfg.trainer
    hydra_cfg = cfg.get("hydra") or {}
    if str(hydra_cfg.get("launcher", {}).get("_target_", "")).endswith("SlurmLauncher"):
        if multirun and shutil.which("sbatch") is None:  # submitit's traceback, otherwise
            raise DifftuneError(
                "hardware=slurm: no SLURM on this machine (sbatch not found); submit from a "
                "cluster's login node, or run the jobs here: hydra/launcher=submitit_local "
                "instead of hardware=slurm"
            )
        return  # the jobs run on the cluster's nodes, which check their own GPUs
    choices = hydra_cfg.get("runtime", {}).get("choices", {})
    choice, experiment = choices.get("hardware", ""), choices.get("experiment")
    name = f"hardware={choice}" if choice else f"trainer.accelerator={trainer.get('accelerator')}"
    typed = {
        o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.get("overrides", {}).get("task", [])
    }
    if choice and experiment and "hardware" not in typed:
        name = f"experiment={experiment} (it sets hardware={choice})"
    if trainer.get("accelerator") in ("gpu", "cuda") and not cuda_available():
        raise DifftuneError(
            f"{name}: trainer.accelerator={trainer.get('accelerator')} but no CUDA GPU is visible; "
            "add hardware=cpu (or hardware=ddp_cpu for DDP on the CPU)"
        )
    devices = trainer.get("devices", 1)
    several = devices == -1 or devices == "auto" or (isinstance(devices, int) and devices > 1)
    rank_launcher = "TORCHELASTIC_RUN_ID" in os.environ or "SLURM_JOB_ID" in os.environ
    if (
        multirun
        and several
        and str(trainer.get("strategy", "")).startswith("ddp")
        and not (rank_launcher or trainer.get("strategy") == "ddp_spawn")
    ):
        raise DifftuneError(
            f"{name} with -m: Lightning would start each rank by re-running the whole sweep; "
            "launch the ranks with torchrun (torchrun --standalone --nproc_per_node=N train.py -m "
            "...) or use hardware=slurm"
        )


def _one_line(err: Exception, override_strings: list[str], config_name: str) -> str:
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, option = missing.groups()
        if group == "hydra/launcher" and option.startswith("submitit"):
            return f"hardware=slurm needs the Hydra submitit launcher: {SUBMITIT_HINT}"
        options = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
        valid = f"valid: {', '.join(options)}" if options else "see conf/" + group
        return f"{group}={option}: no such option; {valid}"
    unknown = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text
    )
    if unknown:
        key = unknown.group(1)
        given = next((o for o in override_strings if o.split("=", 1)[0].lstrip("+~") == key), key)
        moved = {k: f"page.{k}" for k in PAGE_KEYS} if config_name == "demo" else MOVED
        if key in moved:
            return f"{given}: this key moved; use {moved[key]}={given.partition('=')[2]}"
        return (
            f"{given}: no such key; '+{given}' adds a new one, and "
            f"`python {config_name}.py --cfg job` lists the keys there are"
        )
    return text.strip().splitlines()[0]


def quoting_hint(err: OverrideParseException) -> str:
    """One line for an override Hydra cannot parse, showing it quoted for Hydra and the shell."""
    reason = str(err).strip().splitlines()[0]
    key, sep, value = err.override.partition("=")
    if not sep:
        return f"{err.override}: Hydra cannot parse this override ({reason})"
    inner = "'" if '"' in value and "'" not in value else '"'
    quoted = shlex.quote(f"{key}={inner}{value}{inner}")
    return (
        f"{err.override}: Hydra cannot parse this override ({reason}); quote the value for "
        f"Hydra and the whole override for the shell: {quoted}"
    )


def comma_hint(override: Override, base: DictConfig | None = None) -> str:
    """A comma list without -m: a list value (brackets), text with commas (quote it) or a
    sweep (add -m)."""
    key = override.get_key_element().lstrip("+~")
    value = override.input_line.split("=", 1)[1] if override.input_line else override.value()
    if base is not None and isinstance(OmegaConf.select(base, key), ListConfig):
        return (
            f"{key}={value}: Hydra reads a comma as a list of values to sweep; {key} is a list: "
            f"write it in brackets, {key}=[{value}]; to sweep, add -m"
        )
    return (
        f"{key}={value}: Hydra reads a comma as a list of values to sweep; for text with commas "
        f"quote it for Hydra inside the shell's quotes: '{key}=\"{value}\"'; to sweep, add -m"
    )


def _sweep_config(config_dir: Path, config_name: str, plain: list[str]) -> DictConfig | None:
    """The config the non-sweep overrides compose: does it set MULTIRUN itself (sweep=lr_optuna),
    which sweeper runs the jobs, which keys are lists. None where it does not compose (the
    checks below report why)."""
    previous = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=plain, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError):
        return None
    finally:
        HydraConfig.instance().cfg = previous


def _interval_ends(override: Override, base: DictConfig | None) -> Override:
    """An optimising sweeper's search range, `key=interval(a, b)`, as the two jobs `key=a,b`
    to check; a sweeper that cannot search a range (Hydra's basic one) is one line."""
    sweep = override.value() if override.is_sweep_override() else None
    if not isinstance(sweep, IntervalSweep):
        return override
    key = override.get_key_element()
    sweeper = "" if base is None else str(base.hydra.sweeper.get("_target_", ""))
    if "optuna" not in sweeper.lower():
        raise DifftuneError(
            f"{override.input_line}: a search range for an optimising sweeper (sweep=lr_optuna, "
            "hydra/sweeper=optuna); Hydra's basic sweeper takes values: "
            f"{key.lstrip('+~')}=1e-4,3e-4 or range(1,5)"
        )
    return OverridesParser.create().parse_override(f"{key}={sweep.start!r},{sweep.end!r}")


def check_output_dir(cfg: DictConfig, multirun: bool) -> None:
    """Hydra creates the run (or sweep) dir first: a file on its path is one line, not a crash."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    path = Path(str(OmegaConf.select(cfg, key))).expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DifftuneError(
            f"{key}={path}: {blocker} is a file, not a directory; pass a new directory"
        )


def job_dir(cfg: DictConfig, multirun: bool, num: int) -> tuple[Path, str]:
    """Where job `num` writes, and the key that says so."""
    if not multirun:
        return Path(str(cfg.hydra.run.dir)).expanduser(), "hydra.run.dir"
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = num
    path = Path(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))
    return path.expanduser(), "hydra.sweep.dir"


def options_of(group: Path) -> list[str]:
    """A config group's options, sorted; `_base`-like files (what options build on) left out."""
    return sorted(p.stem for p in group.glob("*.yaml") if not p.stem.startswith("_"))


def group_value_hint(parsed: list[Override], config_dir: Path) -> str | None:
    """One line for a config group given a number (`hardware=1`) or an override with no key."""
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if not key:
            return f"{override.input_line}: an override needs a key (key=value)"
        group = config_dir / key
        if group.is_dir() and not isinstance(override.value(), str | list):
            return f"{override.input_line}: no such option; valid: {', '.join(options_of(group))}"
    return None


def private_option_hint(parsed: list[Override], config_dir: Path) -> str | None:
    """One line for a config group option whose name starts with `_` (`model=_base`): a file the
    other options build on, not one to run."""
    for override in parsed:
        key, value = override.get_key_element().lstrip("+~"), override.value()
        group = config_dir / key
        if group.is_dir() and isinstance(value, str) and value.startswith("_"):
            return f"{override.input_line}: no such option; valid: {', '.join(options_of(group))}"
    return None


def _one_object(option: Path) -> bool:
    """Whether a group's option file configures one thing (`_target_`, or plain settings at its
    top), not a set of named entries (a logger or callback each) or a `_global_` package."""
    text = option.read_text()
    if "@package _global_" in text:
        return False
    node = OmegaConf.load(option)
    return isinstance(node, DictConfig) and any(
        k != "defaults"
        and not isinstance(v, DictConfig)
        and not OmegaConf.is_interpolation(node, k)
        for k, v in node.items_ex(resolve=False)
    )  # an entry may be an interpolation (callbacks' `ema: ${oc.select:ema,null}`)


def list_option_hint(parsed: list[Override], config_dir: Path) -> str | None:
    """One line for a list given to a group of single things (`scheduler=[ddim,ddpm]`): Hydra
    merges the options into one (the last one's settings win), which is no option at all."""
    for override in parsed:
        key, value = override.get_key_element().lstrip("+~"), override.value()
        group = config_dir / key
        if not (group.is_dir() and isinstance(value, list) and len(value) > 1):
            continue
        files = [group / f"{option}.yaml" for option in value]
        if all(f.is_file() for f in files) and any(_one_object(f) for f in files):
            return (
                f"{key}=[{','.join(map(str, value))}]: Hydra merges a list of options into one "
                f"{key} (the last one's settings win where they overlap); pick one, or run each: "
                f"-m {key}={','.join(map(str, value))}"
            )
    return None


def script_sweeps(config_dir: Path, config_name: str) -> list[str]:
    """The `sweep=` options of this script: those that compose with its config and sweep only
    keys it has (cfg_scale is sample.py's; model.optimizer.lr is train.py's)."""
    names = []
    for option in sorted(p.stem for p in (config_dir / "sweep").glob("*.yaml")):
        cfg = _sweep_config(config_dir, config_name, [f"sweep={option}"])
        if cfg is not None and _missing_param(cfg) is None:
            names.append(option)
    return names


def _missing_param(cfg: DictConfig) -> str | None:
    """The first key of the config's own sweep (`hydra.sweeper.params`) that the config has not
    (`+key` adds one, `~key` deletes one: not asked)."""
    params = [k for k in OmegaConf.select(cfg, "hydra.sweeper.params") or {} if k[0] not in "+~"]
    return next((k for k in params if OmegaConf.select(cfg, k, default=_NONE) is _NONE), None)


_NONE = object()


def check_sweep_choice(
    parsed: list[Override], base: DictConfig | None, config_dir: Path, config_name: str
) -> None:
    """`sweep=<option>` is one of this script's: it composes here (sample.py has no
    `callbacks` for sweep=lr to set) and sweeps keys this config has (train.py has no
    `cfg_scale`); one line with this script's sweeps otherwise."""
    choice = next((o for o in parsed if o.get_key_element().lstrip("+") == "sweep"), None)
    if choice is None or not (config_dir / "sweep" / f"{choice.value()}.yaml").is_file():
        return  # none, or not an option: the composition names the valid ones
    if base is None:  # the sweep's doing, when the rest composes without it
        rest = [o.input_line for o in parsed if o is not choice and not o.is_sweep_override()]
        if _sweep_config(config_dir, config_name, rest) is None:
            return  # something else: the jobs' checks name it
        why = f"it sets keys or config groups {config_name}.py has not"
    else:
        missing = _missing_param(base)
        if missing is None:
            return
        why = f"it sweeps {missing}, a key {config_name}.py has not"
    valid = ", ".join(script_sweeps(config_dir, config_name)) or "none"
    raise DifftuneError(
        f"sweep={choice.value()}: not a sweep of {config_name}.py ({why}); {config_name}.py's "
        f"sweeps: {valid}"
    )


def config_sweeps(base: DictConfig, given: set[str]) -> list[Override]:
    """The sweep a config sets itself (`hydra.sweeper.params`, e.g. sweep=lr), as overrides, for
    the keys the command line does not sweep: each of their jobs is checked too."""
    params = OmegaConf.select(base, "hydra.sweeper.params") or {}
    parser = OverridesParser.create()
    return [parser.parse_override(f"{k}={v}") for k, v in params.items() if k not in given]


def group_off_hint(
    err: Exception, plain: list[str], given: list[str], config_dir: Path, config_name: str
) -> str | None:
    """One line for a key of a config group that this run has not chosen (`guidance.scale=3`
    with guidance=none, `ema.decay=0.9` without ema=default): Hydra said "no such key; use
    +guidance.scale", which adds a stray key and no guidance."""
    unknown = re.search(r"Could not override '([^']+)'", str(err))
    key = unknown.group(1) if unknown else ""
    head = key.split(".")[0]
    if "." not in key or not (config_dir / head).is_dir():
        return None
    rest = [o for o in plain if o.split("=", 1)[0].lstrip("+~") != key]
    cfg = _sweep_config(config_dir, config_name, rest)
    if cfg is None or OmegaConf.select(cfg, head) is not None:
        return None  # the group is chosen: its option has no such key
    given_as = next((o for o in given if o.split("=", 1)[0].lstrip("+~") == key), key)
    options = [o for o in options_of(config_dir / head) if o != "none"]
    return (
        f"{given_as}: this run has no {head}, so no {key}; choose one first: "
        f"{head}={options[0]} {given_as} ({head} options: {', '.join(options)})"
    )


def check_command_line(
    config_dir: Path,
    config_name: str,
    argv: list[str],
    check_job: Callable[[DictConfig, Path, str], None] | None = None,
) -> None:
    """Compose the config for every job of `argv` (sweeps expanded); raise a one-line error.

    `check_job(cfg, job_dir, key)` then checks each composed job and where it would write. The
    default run dir is looked at, not made (`fresh_dir`): Hydra makes it when the run starts."""
    with choosing_only():
        _check_command_line(config_dir, config_name, argv, check_job)


def _check_command_line(
    config_dir: Path,
    config_name: str,
    argv: list[str],
    check_job: Callable[[DictConfig, Path, str], None] | None,
) -> None:
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as err:
        raise DifftuneError(quoting_hint(err)) from err
    hint = private_option_hint(parsed, config_dir) or list_option_hint(parsed, config_dir)
    if hint is not None:
        raise DifftuneError(hint)
    sweeps = [o for o in parsed if o.is_sweep_override()]
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    base = _sweep_config(config_dir, config_name, plain)
    check_sweep_choice(parsed, base, config_dir, config_name)
    # a config may set MULTIRUN itself (sweep=lr_optuna): its sweeps need no -m
    multirun = bool(args.multirun) or base is not None and str(base.hydra.mode).endswith("MULTIRUN")
    if sweeps and not multirun:
        raise DifftuneError(comma_hint(sweeps[0], base))
    if multirun and base is not None:
        given = {o.get_key_element().lstrip("+~") for o in parsed}
        parsed = [*parsed, *config_sweeps(base, given)]
    parsed = [_interval_ends(o, base) for o in parsed]
    jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0] if parsed else [[]]
    previous = HydraConfig.instance().cfg  # restored after: the checks leave no Hydra state
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            for num, overrides in enumerate(jobs):
                cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
                HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the job's keys
                multirun = (
                    multirun
                    or cfg.hydra.mode is not None
                    and str(cfg.hydra.mode).endswith("MULTIRUN")
                )
                check_output_dir(cfg, multirun)
                if "trainer" in cfg:
                    check_hardware(cfg, multirun=multirun)
                if check_job is not None:
                    check_job(cfg, *job_dir(cfg, multirun, num))
    except ValueError:  # e.g. Hydra's "Config group override must be a string"
        hint = group_value_hint(parsed, config_dir)
        if hint is None:
            raise
        raise DifftuneError(hint) from None
    except (ConfigCompositionException, MissingConfigException, OmegaConfBaseException) as err:
        hint = group_off_hint(err, plain, list(args.overrides), config_dir, config_name)
        raise DifftuneError(hint or _one_line(err, list(args.overrides), config_name)) from None
    except HydraException as err:
        raise DifftuneError(_one_line(err, list(args.overrides), config_name)) from None
    finally:
        HydraConfig.instance().cfg = previous
