"""Arguments for `write_model_card` and a reader for what it wrote."""

from pathlib import Path

import yaml
from PIL import Image


def card_args(tmp_path: Path, **overrides) -> dict:
    """A 300-step vintage-faces fine-tune's facts, with a sample grid written to `tmp_path`."""
    grid = tmp_path / "grid_step_000300.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(grid)
    args = dict(
        base_model="google/ddpm-celebahq-256", dataset="huggan/vintage-faces", steps=300,
        effective_batch=16, lr=1e-5, precision="bf16-mixed", ema=0.999,
        metrics={"train/loss": 0.0312, "val/loss": 0.04567}, sample_grid=grid,
    )  # fmt: skip
    args.update(overrides)
    return args


def split_card(text: str) -> tuple[dict, str]:
    """(front matter, body) of a model card."""
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body
