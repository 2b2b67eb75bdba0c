"""A conditional pipeline loads with plain diffusers, keeps its classes, and its model card's
sampling code runs and equals `sample(..., class_labels=, cfg_scale=)`."""

import re

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from difftune.core.conditioning import class_names_of
from difftune.hub.model_card import write_model_card
from difftune.hub.pipelines import export_pipeline
from difftune.sampling import sample
from helpers.model_cards import card_args, split_card
from helpers.models import make_conditional_unet

NAMES = ("photo", "vintage", "cyanotype")


def test_the_model_card_lists_the_classes_and_its_cfg_code_samples_them(tmp_path):
    unet = make_conditional_unet(NAMES)
    pipe = export_pipeline(unet, DDPMScheduler(num_train_timesteps=1000), tmp_path / "pipeline")
    card = write_model_card(pipe, **card_args(tmp_path), class_names=list(NAMES))
    meta, body = split_card(card.read_text())
    assert meta["tags"] == ["pytorch", "diffusers", "class-conditional", "difftune"]
    assert "pipeline_tag" not in meta  # the Hub's unconditional widget would pass no labels
    for row in ["| 0 | photo |", "| 1 | vintage |", "| 2 | cyanotype |", "id 3 is the null label"]:
        assert row in body, row
    assert "DDPMPipeline.from_pretrained" not in body  # its __call__ passes no labels
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the card's own lines, run as a user would

    loaded = UNet2DModel.from_pretrained(pipe / "unet")
    assert class_names_of(loaded) == list(NAMES)
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scheduler = DDIMScheduler.from_pretrained(pipe / "scheduler")
    labels = torch.zeros(4, dtype=torch.long)
    ours = sample(loaded.eval(), scheduler, noise, 40, class_labels=labels, cfg_scale=3.0)
    torch.testing.assert_close(namespace["images"], (ours / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
