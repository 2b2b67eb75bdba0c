"""Fine-tune a DDPM pipeline: `python train.py [key=value ...]`; the config is conf/train.yaml."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from difftune.run.cli import exit_on_user_error, preflight
from difftune.run.quiet import one_copy_of_lightning_logs, silence_third_party
from difftune.run.resume import continue_in_its_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> dict[str, float] | float:
    from difftune.run.sweep import objective  # here: `--help` and bad input need none of it
    from difftune.run.train import train

    one_copy_of_lightning_logs()

    metrics = train(cfg)
    return objective(metrics, cfg.get("objective"))


if __name__ == "__main__":
    silence_third_party()
    preflight(Path(__file__).parent / "conf", "train", sys.argv[1:])
    sys.argv[1:] = continue_in_its_dir(Path(__file__).parent / "conf", "train", sys.argv[1:])
    main()
