"""The two private Hydra parts `run/preflight.py` relies on (the only place that touches any):
this fails loudly when a Hydra upgrade changes them, before a user's sweep does."""

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser


def test_hydra_parses_the_command_line_as_preflight_expects():
    args = get_args_parser().parse_args(["-m", "seed=1,2", "data.batch_size=4"])
    assert args.multirun and args.overrides == ["seed=1,2", "data.batch_size=4"]
    assert not (args.help or args.hydra_help or args.info or args.shell_completion)


def test_hydra_splits_a_sweep_into_its_jobs_as_preflight_expects():
    parsed = OverridesParser.create().parse_overrides(["seed=1,2", "model=a,b", "x=3"])
    jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    assert [list(job) for job in jobs] == [
        ["seed=1", "model=a", "x=3"],
        ["seed=1", "model=b", "x=3"],
        ["seed=2", "model=a", "x=3"],
        ["seed=2", "model=b", "x=3"],
    ]
