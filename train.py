"""Fine-tune a DDPM pipeline: `python train.py [key=value ...]`; the config is conf/train.yaml."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from difftune.cli import exit_on_user_error, preflight
from difftune.train import objective, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> dict[str, float] | float:
    metrics = train(cfg)
    return objective(metrics, cfg.get("objective"))


if __name__ == "__main__":
    preflight(Path(__file__).parent / "conf", "train", sys.argv[1:])
    main()
