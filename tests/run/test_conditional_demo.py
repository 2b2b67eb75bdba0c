"""The embedded conditional demo, `python train.py experiment=conditional`: after it, samples drawn
with `class_label=c` at the README's CFG scale look like style c to a classifier written from the
styles' own statistics; before it (a fresh class embedding, cfg_scale=1) the labels do nothing."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image

from difftune.core.conditioning import add_class_embedding, class_names_of
from difftune.data.synthetic import style_of
from difftune.hub.export import export_checkpoint
from difftune.hub.pipelines import export_pipeline, load_noise_scheduler, load_unet
from difftune.run.sample_images import sample_images
from difftune.run.train import train
from helpers.compose import ROOT, compose_sample, compose_train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("every_core")]

STYLES = ["photo", "vintage", "cyanotype"]
PER_CLASS = 30


@pytest.fixture
def every_core():
    """The demo as a user runs it: torch's threads on every core (the suite's default is one,
    which makes this 600-step run ~1.5x slower on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


def readme_cfg_scale() -> float:
    """The CFG scale of the README's demo sampling command."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"python sample\.py pretrained=outputs/conditional/\S+ (.*)", readme)
    return float(re.search(r"cfg_scale=(\S+)", command.group(1)).group(1))


def accuracy(pretrained: Path, out: Path, *overrides: str) -> tuple[float, dict]:
    """Share of `PER_CLASS` samples per class that `style_of` labels as the class asked for."""
    cfg = compose_sample(
        f"pretrained={pretrained}", f"num_images={PER_CLASS}", f"batch_size={PER_CLASS}",
        *overrides, output_dir=out,
    )  # fmt: skip
    sample_images(cfg)
    confusion = {}
    for name in STYLES:
        files = sorted((out / "images").glob(f"{name}_*.png"))
        assert len(files) == PER_CLASS
        seen = [style_of(np.asarray(Image.open(f), dtype=np.float32) / 127.5 - 1) for f in files]
        confusion[name] = {style: seen.count(style) for style in STYLES}
    hits = sum(confusion[name][name] for name in STYLES)
    return hits / (PER_CLASS * len(STYLES)), confusion


def test_before_fine_tuning_the_labels_do_nothing(tmp_path):
    """A fresh (zero) class embedding on the base: every label samples the base's photo style."""
    unet = add_class_embedding(load_unet("difftune/tiny_base"), STYLES)
    pipeline = export_pipeline(unet, load_noise_scheduler("difftune/tiny_base"), tmp_path / "p")
    score, confusion = accuracy(pipeline, tmp_path / "before", "cfg_scale=1")
    assert score <= 1 / 3 + 0.15, confusion


def test_the_demo_run_samples_each_class_as_that_class(tmp_path):
    run = tmp_path / "run"
    train(compose_train("experiment=conditional", output_dir=run))

    classes = json.loads((run / "classes.json").read_text())
    assert classes == {"class_names": STYLES, "null_label": 3}
    unet = UNet2DModel.from_pretrained(run / "pipeline" / "unet")  # plain diffusers
    assert class_names_of(unet) == STYLES and unet.config.num_class_embeds == 4
    card = (run / "pipeline" / "README.md").read_text()
    assert "| 1 | vintage |" in card
    grids = sorted((run / "samples").glob("step_*.png"))
    assert [g.name for g in grids] == [f"step_{s:06d}.png" for s in (0, 600)]

    score, confusion = accuracy(run, tmp_path / "after", f"cfg_scale={readme_cfg_scale()}")
    assert score >= 0.9, confusion

    # the checkpoint re-exports (python -m difftune.hub.export) to the same conditional UNet
    again = export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "again")
    reloaded = UNet2DModel.from_pretrained(again / "unet")
    assert class_names_of(reloaded) == STYLES
    for name, tensor in unet.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert "| 2 | cyanotype |" in (again / "README.md").read_text()
