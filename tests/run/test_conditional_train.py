"""`train(cfg)` with `model.conditioning=class`: classes in the outputs, a checkpoint that
weights_only loads, a resume that equals the uninterrupted run, and errors before any load."""

import json

import pytest
import torch
from omegaconf import open_dict

from difftune.errors import DifftuneError
from difftune.run.train import train
from helpers.compose import quick
from helpers.runs import losses, unet_weights

CONDITIONAL = ("experiment=conditional", "data.num_images=96", "trainer.log_every_n_steps=1")
STYLES = ["photo", "vintage", "cyanotype"]


def test_a_conditional_run_resumes_exactly_and_records_its_classes(tmp_path):
    whole = quick(tmp_path / "whole", *CONDITIONAL, steps=4)
    train(whole)
    assert json.loads((tmp_path / "whole" / "classes.json").read_text()) == {
        "class_names": STYLES, "null_label": 3,
    }  # fmt: skip
    first = quick(tmp_path / "first", *CONDITIONAL, steps=2)
    train(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)  # no ListConfig inside
    assert state["hyper_parameters"]["class_names"] == STYLES
    assert state["datamodule_hyper_parameters"]["style"] == STYLES

    resumed = quick(tmp_path / "resumed", *CONDITIONAL, f"ckpt_path={last}", steps=4)
    train(resumed)  # the same noise, timesteps and dropped labels as the uninterrupted run
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(got) and max(abs(got[s] - expected[s]) for s in got) <= 1e-6
    after, weights = unet_weights(tmp_path / "resumed"), unet_weights(tmp_path / "whole")
    assert "class_embedding.weight" in weights
    assert max((after[k] - weights[k]).abs().max().item() for k in weights) <= 1e-6


def test_conditioning_without_labels_stops_before_the_model_loads(tmp_path, monkeypatch):
    import difftune.hub.pipelines as pipelines

    monkeypatch.setattr(pipelines, "load_unet", lambda *a, **k: pytest.fail("UNet loaded"))
    cfg = quick(tmp_path, "model.conditioning=class")
    with pytest.raises(DifftuneError, match=r"^model.conditioning=class needs labelled data"):
        train(cfg)


def test_one_class_is_refused_not_trained_as_a_conditional_model(tmp_path):
    """`data.style=photo` (not a list) with labels: before, a 1-class model, without a word."""
    cfg = quick(tmp_path, "model.conditioning=class", "data.label_column=style", "data.style=photo")
    with pytest.raises(DifftuneError, match=r"^model.conditioning=class: the data has one class "
                       r"\(photo\); a class-conditional model needs at least 2"):  # fmt: skip
        train(cfg)


def test_a_conditional_base_needs_conditioning(tmp_path):
    """An earlier conditional run as `model.pretrained`, without model.conditioning: one line."""
    cfg = quick(tmp_path / "first", *CONDITIONAL, steps=1)
    with open_dict(cfg):
        cfg.callbacks.sample_grid = None
    train(cfg)
    again = quick(tmp_path / "again", f"model.pretrained={tmp_path / 'first'}")
    with pytest.raises(DifftuneError, match=r"^model.conditioning=null: the pretrained UNet is "):
        train(again)
