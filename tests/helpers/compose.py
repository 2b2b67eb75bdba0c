"""The real conf/train.yaml and conf/sample.yaml, composed as the entry points do, and shrunk."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def compose_train(*overrides: str, output_dir: Path) -> DictConfig:
    """The real train config, writing to `output_dir` (and indexing runs for resume=true there)."""
    extra = [] if any(o.startswith("resume_dir=") for o in overrides) else [
        f"resume_dir={output_dir}/resume_index"
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={output_dir}", *extra, *overrides])


def compose_sample(*overrides: str, output_dir: Path) -> DictConfig:
    """The real sample config, writing to `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("sample", overrides=[f"paths.output_dir={output_dir}", *overrides])


def shrink(cfg: DictConfig, steps: int = 4) -> DictConfig:
    """CPU, few steps, cheap grids: what every test run of a composed train config needs."""
    with open_dict(cfg):
        cfg.trainer.update(accelerator="cpu", devices=1, precision="32-true", max_steps=steps)
        cfg.trainer.update(val_check_interval=steps, enable_progress_bar=False, max_epochs=-1)
        cfg.callbacks.sample_grid.update(every_n_steps=steps, num_images=2, num_inference_steps=2)
    return cfg


def shrink_sample(cfg: DictConfig, images: int = 2, steps: int = 3) -> DictConfig:
    """`images` images in one batch, at most `steps` denoising steps: a sample run in a second."""
    with open_dict(cfg):
        cfg.update(num_images=images, batch_size=images)
        cfg.num_inference_steps = min(cfg.num_inference_steps, steps)
    return cfg


def quick(run_dir: Path, *overrides: str, steps: int = 2, **kwargs) -> DictConfig:
    """The train config with `overrides`, in `run_dir`, shrunk to `steps` steps."""
    return shrink(compose_train(*overrides, output_dir=run_dir, **kwargs), steps=steps)
