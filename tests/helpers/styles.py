"""Sampling a conditional pipeline and labelling each sample with the styles' own classifier."""

from pathlib import Path

import numpy as np
from PIL import Image

from difftune.data.synthetic import style_of
from difftune.run.sample_images import sample_images
from helpers.compose import compose_sample

STYLES = ["photo", "vintage", "cyanotype"]
PER_CLASS = 30


def accuracy(
    pretrained: Path, out: Path, *overrides: str, per_class: int = PER_CLASS
) -> tuple[float, dict]:
    """Share of `per_class` samples per class that `style_of` labels as the class asked for."""
    cfg = compose_sample(
        f"pretrained={pretrained}", f"num_images={per_class}", f"batch_size={per_class}",
        *overrides, output_dir=out,
    )  # fmt: skip
    sample_images(cfg)
    confusion = {}
    for name in STYLES:
        files = sorted((out / "images").glob(f"{name}_*.png"))
        assert len(files) == per_class
        seen = [style_of(np.asarray(Image.open(f), dtype=np.float32) / 127.5 - 1) for f in files]
        confusion[name] = {style: seen.count(style) for style in STYLES}
    hits = sum(confusion[name][name] for name in STYLES)
    return hits / (per_class * len(STYLES)), confusion
