"""KID/FID on offline features, the KID callback, and KID falling while the default fine-tunes."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_unet
from diffusers import DDPMScheduler
from hydra import compose, initialize_config_dir
from lightning.pytorch import Trainer
from omegaconf import DictConfig, open_dict

import difftune.metrics.distance as metrics
from difftune.callbacks.kid import KIDCallback
from difftune.core.module import DiffusionFineTuner
from difftune.data import ImageDataModule, SyntheticStyleDataset
from difftune.errors import DifftuneError
from difftune.metrics.distance import SmallFeatures, distribution_distance, resolve_subset_size
from difftune.run.train import build, train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def unit_images(style: str, seed: int, n: int = 48, size: int = 32) -> torch.Tensor:
    data = SyntheticStyleDataset(n, size, style, seed)
    return torch.stack([data[i] for i in range(n)]) / 2 + 0.5


def compose_train(*overrides: str, output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={output_dir}", *overrides])


class CountingFeatures(torch.nn.Module):
    """SmallFeatures that counts the images it sees."""

    name = "small"

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallFeatures()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.net(x)


# --- the metric ----------------------------------------------------------------------------------


def test_kid_is_near_zero_for_one_distribution_and_large_for_a_shifted_one():
    vintage_a, vintage_b = unit_images("vintage", 0), unit_images("vintage", 1)
    photo = unit_images("photo", 1)
    same = distribution_distance(vintage_a, vintage_b, fid=True)
    shifted = distribution_distance(vintage_a, photo, fid=True)
    assert set(same) == {"kid_small", "kid_small_std", "fid_small"}
    assert abs(same["kid_small"]) < 0.01 < 0.04 < shifted["kid_small"]
    assert shifted["kid_small"] > 10 * max(abs(same["kid_small"]), 1e-3)
    assert shifted["fid_small"] > 10 * same["fid_small"]
    # reproducible, and training's global random stream is left alone
    state = torch.random.get_rng_state()
    assert distribution_distance(vintage_a, photo) == distribution_distance(vintage_a, photo)
    assert torch.equal(state, torch.random.get_rng_state())


def test_small_features_are_fixed_by_the_seed_and_accept_uint8():
    x = unit_images("photo", 0, n=4)
    a, b, c = SmallFeatures(seed=0), SmallFeatures(seed=0), SmallFeatures(seed=1)
    assert a(x).shape == (4, a.num_features)
    assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), c(x))
    uint8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(a(uint8), a(uint8.float() / 255))


def test_clip_features_with_random_weights(tmp_path):
    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                       "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    path = tmp_path / "difftune-kid-tiny-clip.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        extractor = metrics.build_feature_extractor("clip", model_name="difftune-kid-tiny-clip",
                                                    pretrained=None)  # fmt: skip
    out = distribution_distance(unit_images("vintage", 0, 8), unit_images("photo", 0, 8),
                                features=extractor)  # fmt: skip
    assert set(out) == {"kid_clip", "kid_clip_std"}
    assert torch.isfinite(torch.tensor(out["kid_clip"]))


def test_subset_size_larger_than_the_samples_is_clamped_with_a_warning():
    assert resolve_subset_size(None, 32, 64) == 16
    assert resolve_subset_size(10, 32, 64) == 10
    with pytest.warns(UserWarning, match="subset_size=1000 is larger"):
        assert resolve_subset_size(1000, 32, 64) == 32
    x, y = unit_images("vintage", 0, 8), unit_images("photo", 0, 8)
    with pytest.warns(UserWarning, match="using subset_size=8"):
        out = distribution_distance(x, y, subset_size=1000)
    assert out["kid_small"] > 0


def test_unknown_features_name_lists_the_valid_ones():
    with pytest.raises(DifftuneError, match="features='vgg' is not one of small, clip, inception"):
        metrics.build_feature_extractor("vgg")


def test_inception_without_torch_fidelity_is_one_line_with_the_offline_options(monkeypatch):
    monkeypatch.setattr(metrics, "_TORCH_FIDELITY_AVAILABLE", False)
    with pytest.raises(DifftuneError) as err:
        metrics.build_feature_extractor("inception")
    message = str(err.value)
    assert "\n" not in message and "torch-fidelity" in message
    assert "features=small" in message and "features=clip" in message


# --- the callback --------------------------------------------------------------------------------


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
    # measurement only; generated: 4 samples in batches of 3 (3 + 1) at every measurement
    assert counter.batches == [4, 1] + [3, 1] * 4
    assert callback.real_features.shape == (5, counter.net.num_features)
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
    assert callback.real_features.shape[0] == 6 and callback._subset_size == 4
    assert [step for step, _ in callback.history] == [0, 1]


def test_callback_rejects_bad_settings():
    with pytest.raises(DifftuneError, match="every_n_steps=0"):
        KIDCallback(every_n_steps=0)
    with pytest.raises(DifftuneError, match="num_samples=1"):
        KIDCallback(num_samples=1)
    callback = KIDCallback(features="nope")
    with pytest.raises(DifftuneError, match="not one of small, clip, inception"):
        callback.setup(Trainer(accelerator="cpu", logger=False), None, "fit")


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
