"""Silent wrong output made loud: NaN models, high-depth images, the `weights_only` message."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from omegaconf import open_dict
from PIL import Image

from difftune.core.sampling import sample
from difftune.data.decode import Skipped, decode_image
from difftune.hub.export import main as export_main
from difftune.run.train import train
from helpers.compose import ROOT, compose_train, shrink
from helpers.models import make_tiny_unet, save_tiny_pipeline

# --- a model whose output is not finite -----------------------------------------------------------


def nan_unet():
    """The tiny UNet with one NaN bias: every output pixel is NaN."""
    unet = make_tiny_unet()
    with torch.no_grad():
        unet.conv_out.bias[0] = float("nan")
    return unet


def test_sample_counts_the_steps_whose_model_output_is_not_finite(noise):
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    with pytest.warns(RuntimeWarning, match=r"model output was not finite at 3 of 3 steps"):
        sample(nan_unet(), scheduler, noise, num_inference_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite model: no warning
        sample(make_tiny_unet(), scheduler, noise, num_inference_steps=3)


@pytest.mark.slow
def test_sample_py_with_nan_weights_says_so_and_exits_non_zero(tmp_path):
    pipeline = tmp_path / "nan_pipeline"
    save_tiny_pipeline(pipeline, nan_unet())
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "sample.py", f"pretrained={pipeline}", "num_images=3", "batch_size=2",
         "num_inference_steps=2", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: pretrained={pipeline}: 3 of 3 images are not finite"), last
    assert "model output was not finite at 2 of 2 steps" in result.stderr


# --- float and 16-bit images ----------------------------------------------------------------------


def unit_pixels(path: Path, size: int) -> np.ndarray:
    """What difftune decodes from `path`, back in [0, 1], one channel (all three must agree)."""
    x = decode_image(str(path), size)
    assert isinstance(x, torch.Tensor), x
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    return (x[0].numpy() + 1) / 2


HIGH_DEPTH = {  # file name: (pixels as saved, what they must map to in [0, 1])
    "unit.tif": lambda r: (r.astype(np.float32), r),
    "hdr.tif": lambda r: ((1.5 * r).astype(np.float32), r),  # overshoots 1: scaled by its max
    "signed.tif": lambda r: ((1.2 * r - 0.2).astype(np.float32), r),  # below 0: by its min
    "sixteen.png": lambda r: ((r * 65535).round().astype(np.uint16), r),
    # 8- and 16-bit values saved as float: by the integer range, not stretched to their own max
    "bytes.tif": lambda r: ((r * 200).round().astype(np.float32), (r * 200).round() / 255),
    "words.tif": lambda r: ((r * 3000).round().astype(np.float32), (r * 3000).round() / 65535),
}


@pytest.mark.parametrize("name", HIGH_DEPTH)
def test_float_and_16_bit_images_map_to_unit_range_by_their_real_range(name, tmp_path):
    rng = np.random.default_rng(0)
    unit = rng.random((16, 16))
    unit[0, 0], unit[0, 1] = 0.0, 1.0  # the full range is in every image
    saved, expected = HIGH_DEPTH[name](unit)
    Image.fromarray(saved).save(tmp_path / name)
    np.testing.assert_allclose(unit_pixels(tmp_path / name, 16), expected, atol=1 / 255)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_image_with_non_finite_pixels_is_skipped_with_a_reason(bad, tmp_path):
    pixels = np.full((16, 16), 0.5, np.float32)
    pixels[3, 4] = bad
    Image.fromarray(pixels).save(tmp_path / "bad.tif")
    assert decode_image(str(tmp_path / "bad.tif"), 8) == Skipped(
        "non-finite pixels", str(tmp_path / "bad.tif")
    )


def test_non_finite_images_are_named_in_the_per_epoch_report(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(folder / f"ok{i}.png")
    for i in range(3):  # at least one lands in the training split
        pixels = rng.random((16, 16)).astype(np.float32)
        pixels[i, i] = np.nan
        Image.fromarray(pixels).save(folder / f"nan{i}.tif")
    cfg = shrink(
        compose_train("data=imagefolder", f"data.data_dir={folder}", "data.val_size=2",
                      "data.batch_size=4", "data.image_size=16", output_dir=tmp_path / "run"),
        steps=2,
    )  # fmt: skip
    with open_dict(cfg):
        cfg.trainer.update(max_steps=-1, max_epochs=1)
    with caplog.at_level(logging.WARNING, logger="difftune.callbacks.skipped_images"):
        train(cfg)
    reports = [r.getMessage() for r in caplog.records if "undecodable images" in r.getMessage()]
    assert len(reports) == 1 and reports[0].startswith("epoch 0: skipped "), reports
    assert "non-finite pixels" in reports[0], reports


# --- the `weights_only` message -------------------------------------------------------------------


class Messages(logging.Handler):
    """Every log record (any level) of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


def test_fit_resume_and_export_never_mention_weights_only(tmp_path):
    handler = Messages()
    loggers = [logging.getLogger(), logging.getLogger("lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(shrink(compose_train(output_dir=tmp_path / "first"), steps=2))
            ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
            resumed = shrink(compose_train(f"ckpt_path={ckpt}", output_dir=tmp_path / "resumed"),
                             steps=4)  # fmt: skip
            train(resumed)
            export_main([str(ckpt), "--out", str(tmp_path / "exported")])
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    assert (tmp_path / "resumed" / "pipeline" / "model_index.json").is_file()
    assert len(handler.texts) > 5  # the handler did see the runs' messages
    texts = handler.texts + [str(w.message) for w in caught]
    assert [t for t in texts if "weights_only" in t] == []
