"""`--help`: this script's config groups, each with its options and the current choice. Hydra's
own list shows every folder of conf/ to every script (sample.py listed train.py's `data`,
`callbacks` and the private `model: _base`)."""

from omegaconf import OmegaConf

RESOLVER = "difftune.groups"  # conf/hydra/default.yaml's help template calls it


def groups_help() -> str:
    """One line per config group of the running script: `group: options (now: choice)`."""
    from hydra.core.hydra_config import HydraConfig

    from difftune.config import CONF, hydra_set_aside
    from difftune.run.preflight import options_of, script_sweeps

    hydra_cfg = HydraConfig.get()
    lines = []
    for group, choice in sorted(hydra_cfg.runtime.choices.items()):
        if group == "hydra" or group.startswith("hydra/"):
            continue
        if group == "sweep":  # only the sweeps of keys this script has (lr is train.py's)
            with hydra_set_aside():
                options = script_sweeps(CONF, hydra_cfg.job.config_name)
        else:
            options = options_of(CONF / group)
        lines.append(f"{group}: {', '.join(options) or 'none'}  (now: {choice or 'null'})")
    return "\n".join(lines)


def register_help() -> None:
    """Make `${difftune.groups:}` resolvable for the help template (once per process)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, groups_help, use_cache=False)
