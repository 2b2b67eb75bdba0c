"""Sample a DDPM pipeline, optionally guided: `python sample.py [key=value ...]`."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from difftune.run.cli import exit_on_user_error, preflight
from difftune.run.quiet import one_copy_of_lightning_logs, silence_third_party


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    from difftune.run.sample_images import (
        sample_images,  # here: `--help` and bad input need none of it
    )

    one_copy_of_lightning_logs()

    sample_images(cfg)


if __name__ == "__main__":
    silence_third_party()
    preflight(Path(__file__).parent / "conf", "sample", sys.argv[1:])
    main()
