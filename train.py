"""Fine-tune a DDPM pipeline: `python train.py [key=value ...]`; the config is conf/train.yaml.

Installed with pip, the same command is `difftune-train`; both run the `@hydra.main` in
src/difftune/run/entry.py, which calls the pure `difftune.run.train.train(cfg)`."""

from difftune.run.entry import train_command

if __name__ == "__main__":
    train_command()
