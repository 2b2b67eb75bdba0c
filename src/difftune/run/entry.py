"""The commands: `difftune-train`, `difftune-sample`, `difftune-demo` once installed, and
`python train.py` (sample.py, demo.py) in a checkout. Each composes the packaged configs
(difftune/conf, the repository's conf/), checks the command line, then runs one pure function."""

import os
import sys

import hydra
from omegaconf import DictConfig

from difftune.config import CONF
from difftune.run.cli import exit_on_user_error, multirun_flag_first, preflight
from difftune.run.help import register_help
from difftune.run.quiet import one_copy_of_lightning_logs, silence_third_party


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="train")
@exit_on_user_error
def _train(cfg: DictConfig) -> dict[str, float] | float:
    from difftune.run.sweep import objective  # here: `--help` and bad input need none of it
    from difftune.run.train import train

    one_copy_of_lightning_logs()

    metrics = train(cfg)
    return objective(metrics, cfg.get("objective"))


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="sample")
@exit_on_user_error
def _sample(cfg: DictConfig) -> None:
    from difftune.run.sample_images import sample_images

    one_copy_of_lightning_logs()

    sample_images(cfg)


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="demo")
@exit_on_user_error
def _demo(cfg: DictConfig) -> None:
    from difftune.demo.checks import check_demo_config

    check_demo_config(cfg)  # a bad pipeline or a busy port: one line before Gradio loads
    from difftune.demo.app import serve

    serve(cfg, CONF)


def train_command() -> None:
    """Fine-tune a DDPM pipeline: `difftune-train [key=value ...]` (conf/train.yaml)."""
    from difftune.run.resume import continue_in_its_dir

    silence_third_party()
    register_help()
    sys.argv[1:] = multirun_flag_first(sys.argv[1:])
    preflight(CONF, "train", sys.argv[1:])
    sys.argv[1:] = continue_in_its_dir(CONF, "train", sys.argv[1:])
    _train()


def sample_command() -> None:
    """Sample a DDPM pipeline, optionally guided: `difftune-sample [key=value ...]`."""
    silence_third_party()
    register_help()
    sys.argv[1:] = multirun_flag_first(sys.argv[1:])
    preflight(CONF, "sample", sys.argv[1:])
    _sample()


def demo_command() -> None:
    """The guided-sampling web page: `difftune-demo [key=value ...]` (conf/demo.yaml)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline; nothing sent home
    silence_third_party()
    register_help()
    sys.argv[1:] = multirun_flag_first(sys.argv[1:])
    preflight(CONF, "demo", sys.argv[1:])
    _demo()
