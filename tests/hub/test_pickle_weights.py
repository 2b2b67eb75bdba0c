"""Pipelines whose UNet weights are only a `diffusion_pytorch_model.bin` (PyTorch's pickle
format, as older hub repos ship them) load to the same weights, with one accurate line instead of
diffusers' error and "unsafe serialization" warning."""

import logging

import torch
from diffusers import DDPMPipeline

from difftune.hub.pipelines import EMBEDDED, load_unet
from difftune.run.quiet import silence_third_party


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_bin_only_pipeline_loads_the_same_weights_with_one_accurate_info_line(tmp_path):
    DDPMPipeline.from_pretrained(EMBEDDED["difftune/tiny_base"]).save_pretrained(
        tmp_path / "bin", safe_serialization=False
    )
    assert sorted(p.name for p in (tmp_path / "bin" / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.bin",
    ]  # fmt: skip
    silence_third_party()  # as train.py and sample.py do first
    seen = Collect()
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(seen)  # after the logger's filters: what the user sees
    try:
        unet = load_unet(str(tmp_path / "bin"))
    finally:
        logger.removeHandler(seen)
    reference = load_unet("difftune/tiny_base").state_dict()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in reference.items())
    assert [(r.levelname, r.getMessage()) for r in seen.records] == [
        (
            "INFO",
            "no safetensors weights in this pipeline: its diffusion_pytorch_model.bin is read "
            "with torch.load(weights_only=True), which loads tensors only (no code runs)",
        )
    ]
