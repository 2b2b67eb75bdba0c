"""The guided-sampling web page: `python demo.py [key=value ...]` (conf/demo.yaml)."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from difftune.run.cli import exit_on_user_error, preflight
from difftune.run.quiet import silence_third_party

CONF = Path(__file__).parent / "conf"


@hydra.main(version_base="1.3", config_path="conf", config_name="demo")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from difftune.demo.checks import check_demo_config

    check_demo_config(cfg)  # a bad pipeline or a busy port: one line before Gradio loads
    from difftune.demo.app import serve

    serve(cfg, CONF)


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline; nothing sent home
    silence_third_party()
    preflight(CONF, "demo", sys.argv[1:])
    main()
