"""The KID callback: KID (and FID) of fixed-noise samples while training, and KID falling."""

import csv
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from lightning.pytorch import Trainer
from omegaconf import open_dict
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from difftune.callbacks.kid import KIDCallback
from difftune.core.module import DiffusionFineTuner
from difftune.data import ImageDataModule
from difftune.errors import DifftuneError
from difftune.metrics import features
from difftune.metrics.distance import distribution_distance
from difftune.metrics.features import SmallFeatures
from difftune.run.train import build, train
from helpers.compose import compose_train
from helpers.models import make_tiny_unet


class CountingFeatures(torch.nn.Module):
    """SmallFeatures that counts the images it sees."""

    name = "small"
    num_features = SmallFeatures().num_features

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallFeatures()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.net(x)


def tiny_fit(callback: KIDCallback, tiny_pipeline_dir: Path, steps: int, val_size: int = 6):
    from difftune.hub.pipelines import load_noise_scheduler, load_unet

    module = DiffusionFineTuner(
        unet=load_unet(str(tiny_pipeline_dir)),
        noise_scheduler=load_noise_scheduler(str(tiny_pipeline_dir)),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4),
    )
    datamodule = ImageDataModule(image_size=16, batch_size=4, num_images=24, val_size=val_size)
    trainer = Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


def test_callback_measures_at_start_every_n_steps_and_end_with_real_features_once(
    tiny_pipeline_dir,
):
    counter = CountingFeatures()
    callback = KIDCallback(every_n_steps=2, num_samples=4, num_real=5, features=counter,
                           num_inference_steps=2, batch_size=3, fid=True)  # fmt: skip
    trainer, module = tiny_fit(callback, tiny_pipeline_dir, steps=5)
    assert [step for step, _ in callback.history] == [0, 2, 4, 5]
    # real: 5 held-out images in batches of the data module (4 + 1), extracted in the first
    # measurement only; generated: 4 samples in batches of 3 (3 + 1) at every measurement; each
    # batch once for KID and once for FID (each torchmetrics metric runs its feature module)
    assert counter.batches == [4, 4, 1, 1] + [3, 3, 1, 1] * 4
    kid, fid = callback.metrics["kid"], callback.metrics["fid"]
    assert dim_zero_cat(kid.real_features).shape == (5, counter.num_features)
    assert int(fid.real_features_num_samples) == 5 and int(fid.fake_features_num_samples) == 0
    assert kid.device == fid.device == module.device  # on the module's device, not in the module
    assert not any(isinstance(m, Metric) for m in module.modules())
    # the last value: the real features kept across resets measure as fresh ones would
    real = torch.cat(callback._real_images(trainer))
    fresh = distribution_distance(real, callback._generate(trainer, module), counter.net, fid=True)
    assert callback.history[-1][1] == pytest.approx(fresh["kid_small"], abs=1e-7)
    assert float(trainer.callback_metrics["val/fid_small"]) == pytest.approx(fresh["fid_small"])
    assert {"val/kid_small", "val/kid_small_std", "val/fid_small"} <= set(trainer.callback_metrics)
    assert float(trainer.callback_metrics["val/kid_small"]) == pytest.approx(
        callback.history[-1][1]
    )
    assert module.unet.training  # train mode restored after sampling


def test_the_base_models_step_0_kid_is_computed_once_for_a_sweep(tiny_pipeline_dir, tmp_path):
    """Two jobs from the same base, data and settings: the second reads the first's step 0."""
    sampled = []

    class Counting(KIDCallback):
        def _generate(self, trainer, pl_module):
            sampled.append(trainer.global_step)
            return super()._generate(trainer, pl_module)

    def job(**kwargs):
        callback = Counting(every_n_steps=10, num_samples=4, num_inference_steps=2,
                            cache_dir=str(tmp_path / "kid_cache"), **kwargs)  # fmt: skip
        tiny_fit(callback, tiny_pipeline_dir, steps=1)
        return callback.history

    first, second = job(), job()
    assert sampled == [0, 1, 1]  # the second job sampled only its end, not step 0 again
    assert first[0] == second[0]  # the same step-0 value
    assert len(list((tmp_path / "kid_cache").glob("*.json"))) == 1
    job(seed=1)  # other noise: another measurement of the base
    assert sampled == [0, 1, 1, 0, 1]


def test_callback_clamps_a_budget_larger_than_the_held_out_set(tiny_pipeline_dir):
    callback = KIDCallback(every_n_steps=10, num_samples=4, num_real=50, subset_size=100,
                           num_inference_steps=1)  # fmt: skip
    with pytest.warns(UserWarning) as record:
        tiny_fit(callback, tiny_pipeline_dir, steps=1, val_size=6)
    messages = [str(w.message) for w in record]
    assert any("num_real=50 clamped to 6" in m for m in messages)
    assert any("subset_size=100 is larger" in m and "subset_size=4" in m for m in messages)
    assert dim_zero_cat(callback.metrics["kid"].real_features).shape[0] == 6
    assert callback.metrics["kid"].subset_size == 4
    assert [step for step, _ in callback.history] == [0, 1]


def test_callback_rejects_bad_settings():
    with pytest.raises(DifftuneError, match="every_n_steps=0"):
        KIDCallback(every_n_steps=0)
    with pytest.raises(DifftuneError, match="num_samples=1"):
        KIDCallback(num_samples=1)
    with pytest.raises(
        DifftuneError, match=r"^callbacks.kid.features='nope' is not one of small, "
    ):
        KIDCallback(features="nope")  # when built, before any model loads


def test_inception_features_without_torch_fidelity_name_the_callbacks_key(monkeypatch):
    """The extractor's error named `features=`, a key no config has; the run's is callbacks.kid."""
    monkeypatch.setattr(features, "_TORCH_FIDELITY_AVAILABLE", False)
    callback = KIDCallback(features="inception")
    with pytest.raises(DifftuneError) as err:
        callback.setup(Trainer(accelerator="cpu", logger=False), None, "fit")
    message = str(err.value)
    assert message.startswith("callbacks.kid.features=inception needs torch-fidelity"), message
    assert message.endswith("use callbacks.kid.features=small (offline, no download) or "
                            "callbacks.kid.features=clip")  # fmt: skip


def test_callbacks_kid_composes_the_default_callbacks_plus_kid(tmp_path):
    cfg = compose_train("callbacks=kid", "callbacks.kid.every_n_steps=7", output_dir=tmp_path)
    default = compose_train(output_dir=tmp_path)
    assert set(cfg.callbacks) == set(default.callbacks) | {"kid"}
    assert cfg.callbacks.kid._target_ == "difftune.callbacks.kid.KIDCallback"
    assert cfg.callbacks.kid.every_n_steps == 7 and cfg.callbacks.kid.features == "small"
    assert cfg.callbacks.sample_grid == default.callbacks.sample_grid
    _, _, trainer = build(cfg)
    kid = [c for c in trainer.callbacks if isinstance(c, KIDCallback)]
    assert len(kid) == 1 and kid[0].every_n_steps == 7 and kid[0].seed == cfg.seed


# --- end to end: KID while training ---------------------------------------------------------------


@pytest.mark.slow
def test_kid_falls_while_a_model_learns_the_target_style(tiny_pipeline_dir):
    """A UNet from scratch on "vintage": its samples go from noise to sepia blobs, KID falls."""
    module = DiffusionFineTuner(
        unet=make_tiny_unet(16),
        noise_scheduler=DDPMScheduler(num_train_timesteps=1000),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    datamodule = ImageDataModule(image_size=16, batch_size=16, num_images=256, val_size=32)
    callback = KIDCallback(every_n_steps=50, num_samples=32, num_inference_steps=10)
    trainer = Trainer(
        accelerator="cpu", max_steps=150, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    kid = dict(callback.history)
    print(f"KID vs vintage by step: {kid}")  # seen: 0.135, 0.075, 0.077, 0.076
    assert sorted(kid) == [0, 50, 100, 150]
    assert kid[150] < 0.75 * kid[0], kid


KEY_STEPS, KEY_EVERY = 100, 50


@pytest.mark.slow
def test_kid_to_the_target_falls_on_the_embedded_default(tmp_path):
    """`python train.py callbacks=kid`, shortened: KID to "vintage" at 0, 50, 100 falls.

    The embedded default (the v-prediction tiny_base trained on "photo", fine-tuned on "vintage"
    at lr 3e-4 with offset noise) turns its saturated samples sepia within 100 steps.
    """
    cfg = compose_train("callbacks=kid", output_dir=tmp_path)
    with open_dict(cfg):
        cfg.trainer.update(accelerator="cpu", devices=1, precision="32-true", max_steps=KEY_STEPS)
        cfg.trainer.update(val_check_interval=KEY_STEPS, enable_progress_bar=False)
        for name in cfg.callbacks:  # only KID: grids, curves and bars are tested elsewhere
            if name != "kid":
                cfg.callbacks[name] = None
        cfg.callbacks.kid.update(every_n_steps=KEY_EVERY, num_samples=32, num_inference_steps=10)
        cfg.callbacks.kid.cache_dir = str(tmp_path / "kid_cache")  # step 0 measured, not cached
        cfg.export_dir = None
    result = train(cfg)

    with open(tmp_path / "metrics.csv") as f:
        kid = {int(r["step"]): float(r["val/kid_small"]) for r in csv.DictReader(f)
               if r.get("val/kid_small")}  # fmt: skip
    print(f"KID vs vintage by step: {kid}")
    assert sorted(kid) == list(range(0, KEY_STEPS + 1, KEY_EVERY)), kid
    assert result["val/kid_small"] == pytest.approx(kid[KEY_STEPS])
    assert kid[0] > 0.05  # the base model draws "photo" images, far from "vintage"
    assert kid[KEY_STEPS] < 0.5 * kid[0], kid  # seen: 0.098 -> 0.046 -> 0.035
