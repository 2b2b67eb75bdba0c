"""Fine-tune a DDPM pipeline: `python train.py [key=value ...]`; the config is conf/train.yaml."""

import hydra
from omegaconf import DictConfig

from difftune.cli import exit_on_user_error
from difftune.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> dict[str, float]:
    return train(cfg)


if __name__ == "__main__":
    main()
