"""`sample.py precision=bf16 compile=true`: the speed settings keep the float32 samples."""

import numpy as np
import pytest
import torch
from PIL import Image

from difftune.errors import DifftuneError
from difftune.run.sample_images import sample_images
from helpers.compose import compose_sample

COMMON = ("num_images=2", "batch_size=2", "num_inference_steps=6")


def pixels(run_dir) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p), np.float64) / 255
                     for p in sorted((run_dir / "images").iterdir())])  # fmt: skip


def test_bf16_sampling_stays_near_float32_on_the_embedded_base(tmp_path):
    """bf16 autocast of the UNet calls; the loop stays float32 (images within 2 % on average)."""
    for precision in ("32", "bf16"):
        cfg = compose_sample(*COMMON, f"precision={precision}", output_dir=tmp_path / precision)
        sample_images(cfg)
    float32, bf16 = pixels(tmp_path / "32"), pixels(tmp_path / "bf16")
    assert 0 < np.abs(bf16 - float32).mean() < 0.02


def test_compile_true_samples_with_the_compiled_unet(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    sample_images(compose_sample(*COMMON, "compile=true", output_dir=tmp_path / "c"))
    sample_images(compose_sample(*COMMON, output_dir=tmp_path / "e"))
    assert compiled == ["UNet2DModel"]
    assert np.array_equal(pixels(tmp_path / "c"), pixels(tmp_path / "e"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("precision=16", r"^precision=16: expected one of 32, bf16$"),
        ("compile=yes", r"^compile=yes: expected true or false$"),
    ],
)
def test_a_bad_speed_setting_is_one_line(tmp_path, override, message):
    with pytest.raises(DifftuneError, match=message):
        sample_images(compose_sample(*COMMON, override, output_dir=tmp_path))
