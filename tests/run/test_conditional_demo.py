"""The embedded conditional demo, `python train.py experiment=conditional`: after it, samples drawn
with `class_label=c` at the README's CFG scale look like style c to a classifier written from the
styles' own statistics (before it: tests/run/test_conditional_before.py)."""

import json
import os
import re

import pytest
import torch
from diffusers import UNet2DModel

from difftune.core.conditioning import class_names_of
from difftune.hub.export import export_checkpoint
from difftune.run.train import train
from helpers.compose import ROOT, compose_train
from helpers.styles import STYLES, accuracy

pytestmark = [pytest.mark.slow, pytest.mark.runs_first, pytest.mark.usefixtures("every_core")]


@pytest.fixture
def every_core():
    """The demo as a user runs it: torch's threads on every core (the suite's default is one,
    which makes this 600-step run ~1.5x slower on 2 cores); its share of them beside other
    pytest workers (`-n 2`), where more threads than cores make OpenMP wait on busy ones."""
    threads = torch.get_num_threads()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(threads)


def readme_cfg_scale() -> float:
    """The CFG scale of the README's demo sampling command."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"python sample\.py pretrained=outputs/conditional/\S+ (.*)", readme)
    return float(re.search(r"cfg_scale=(\S+)", command.group(1)).group(1))


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
