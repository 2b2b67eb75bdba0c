"""Sample a DDPM pipeline, optionally guided: `python sample.py [key=value ...]`."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from difftune.cli import exit_on_user_error, preflight
from difftune.generate import generate


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    preflight(Path(__file__).parent / "conf", "sample", sys.argv[1:])
    main()
