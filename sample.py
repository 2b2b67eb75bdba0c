"""Sample a DDPM pipeline, optionally guided: `python sample.py [key=value ...]`."""

import hydra
from omegaconf import DictConfig

from difftune.cli import exit_on_user_error
from difftune.generate import generate


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    main()
