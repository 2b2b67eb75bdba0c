"""`train(cfg)` from the real config: experiments, the offline default, resume, bad input."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel
from lightning.pytorch import Trainer
from omegaconf import open_dict
from PIL import Image

import difftune.hub.pipelines as pipeline_io
from difftune.core.ema import ema_decay
from difftune.errors import DifftuneError
from difftune.run.train import build, train
from helpers.compose import ROOT, compose_train, shrink
from helpers.runs import assert_metrics_were_known


@pytest.mark.parametrize(
    "experiment, expected",
    [
        ("vintage_faces", dict(size=128, batch=8, accumulate=2, lr=1e-5, grid=100, ckpt=1000)),
        ("wikiart", dict(size=256, batch=4, accumulate=2, lr=1e-5, grid=250, ckpt=2500)),
    ],
)
def test_paper_experiments_compose_and_train_on_local_stand_ins(
    experiment, expected, tiny_pipeline_dir, image_folder, tmp_path
):
    cfg = compose_train(f"experiment={experiment}", output_dir=tmp_path)
    assert cfg.model.pretrained in {"google/ddpm-celebahq-256", "google/ddpm-bedroom-256"}
    assert cfg.data.source == "hf" and cfg.trainer.precision == "bf16-mixed"
    assert (cfg.data.image_size, cfg.data.batch_size) == (expected["size"], expected["batch"])
    assert cfg.trainer.accumulate_grad_batches == expected["accumulate"]
    assert cfg.model.optimizer.lr == expected["lr"]
    assert cfg.callbacks.sample_grid.every_n_steps == expected["grid"]
    assert cfg.callbacks.model_checkpoint.every_n_train_steps == expected["ckpt"]

    # The same experiment with the hub ids swapped for a tiny local pipeline and image folder.
    cfg = compose_train(
        f"experiment={experiment}", f"model.pretrained={tiny_pipeline_dir}", "hardware=cpu",
        "data.source=imagefolder", f"+data.data_dir={image_folder}", "data.image_size=32",
        "data.val_size=2", "data.num_workers=0", output_dir=tmp_path,
    )  # fmt: skip
    datamodule, module, trainer = build(shrink(cfg, steps=2))
    assert trainer.accumulate_grad_batches == expected["accumulate"]
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2
    assert (tmp_path / "samples" / "step_000002.png").is_file()


@pytest.mark.slow
def test_offline_default_end_to_end(cfg_train, tmp_path):
    """`python train.py` as composed, shortened: every output of a run, loadable."""
    cfg = shrink(cfg_train, steps=40)
    with open_dict(cfg):
        cfg.callbacks.sample_grid.update(every_n_steps=20, num_images=4, num_inference_steps=10)
        cfg.trainer.val_check_interval = 20
    metrics = train(cfg)

    assert metrics["train/loss"] < 0.2 and metrics["val/loss"] < 0.2
    samples = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert samples == ["step_000000.png", "step_000020.png", "step_000040.png"]
    side = 2 * (2 + 2 * 34)  # 2x2 images of 32 px with 2 px gaps, enlarged 2x; 28 px of labels
    assert Image.open(tmp_path / "samples" / "step_000040.png").size == (side, 28 + side)
    assert Image.open(tmp_path / "loss_curve.png").size[0] > 400
    csv = (tmp_path / "metrics.csv").read_text().splitlines()
    assert "train/loss" in csv[0] and "val/loss" in csv[0]
    assert len([line for line in csv[1:] if line]) >= 40 // cfg.trainer.log_every_n_steps

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 40
    pipeline = DDPMPipeline.from_pretrained(tmp_path / "pipeline")
    exported = pipeline.unet.state_dict()
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(exported[key.removeprefix("unet.")], value)
    base = pipeline_io.load_unet("difftune/tiny_base").state_dict()
    assert any(not torch.equal(base[k], exported[k]) for k in base)


BAD_INPUTS = [
    ("model.pretrained=/no/such/dir", "model.pretrained='/no/such/dir': no such directory"),
    ("data.image_size=30", "data.image_size=30 cannot go through this UNet: use a multiple of 4"),
    ("trainer.accumulate_grad_batches=0", "accumulate_grad_batches=0 must be an integer >= 1"),
    ("model.optimizer.lr=-1e-5", "model.optimizer.lr=-1e-05 must be a number > 0"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path=/no/such.ckpt does not exist"),
]


@pytest.mark.parametrize("override, message", BAD_INPUTS)
def test_bad_input_is_rejected_before_any_model_is_loaded(override, message, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", forbidden)
    with pytest.raises(DifftuneError, match=message.replace("(", r"\(")):
        train(compose_train(override, output_dir=tmp_path))


def test_hub_model_offline_is_one_line_and_exit_status_2(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "train.py", "model=ddpm_celebahq_256", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr
    assert "model.pretrained='google/ddpm-celebahq-256'" in error_lines[0]
    assert "model=tiny_base" in error_lines[0]
    # it is set already: say what it means instead of telling the user to set it
    assert "HF_HUB_OFFLINE=1 is set, so only models already in the HF cache load" in error_lines[0]
    assert "set HF_HUB_OFFLINE=1 to" not in error_lines[0]


def test_dataset_without_decodable_images_fails_before_training(
    tmp_path, tiny_pipeline_dir, monkeypatch
):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    (broken / "b.png").write_text("not an image")
    cfg = compose_train(
        f"model.pretrained={tiny_pipeline_dir}", "data=imagefolder", f"data.data_dir={broken}",
        output_dir=tmp_path,
    )  # fmt: skip
    loaded = []
    monkeypatch.setattr(pipeline_io, "load_unet", lambda *a, **k: loaded.append(a))
    with pytest.raises(DifftuneError) as err:
        train(shrink(cfg))
    assert str(err.value) == (
        f"data.data_dir={broken}: no decodable image (1 training images tried: 1 unreadable; "
        "1 more held out for validation (data.val_size))"
    )
    assert not loaded and not (tmp_path / "checkpoints").exists()  # before the UNet loads


@pytest.mark.slow
def test_ema_run_exports_the_averaged_weights(tmp_path, tiny_pipeline_dir):
    cfg = compose_train(
        f"model.pretrained={tiny_pipeline_dir}", "data.image_size=16", "ema=default",
        "ema.decay=0.5", "ema.warmup=false", output_dir=tmp_path,
    )  # fmt: skip
    train(shrink(cfg, steps=3))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    exported = DDPMPipeline.from_pretrained(tmp_path / "pipeline").unet.state_dict()
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    for key, value in ema.items():
        torch.testing.assert_close(exported[key.removeprefix("unet.")], value)


def test_push_to_hub_after_a_complete_export(tmp_path, tiny_pipeline_dir, monkeypatch, caplog):
    import difftune.hub.push

    calls = []
    monkeypatch.setattr(
        difftune.hub.push, "create_repo", lambda *a, **k: calls.append(("create", a, k))
    )

    def failing_upload(**kwargs):
        calls.append(("upload", kwargs))
        assert (Path(kwargs["folder_path"]) / "unet").is_dir()  # the export is complete first
        raise OSError("no network")

    monkeypatch.setattr(difftune.hub.push, "upload_folder", failing_upload)
    cfg = compose_train(
        f"model.pretrained={tiny_pipeline_dir}", "data.image_size=32", "push_to_hub=true",
        "hub.repo_id=someone/tiny-vintage", output_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(DifftuneError, match="the local export at .* is complete; to retry") as err:
        train(shrink(cfg, steps=2))  # the same rule as `python -m difftune.hub.export`: exit 2
    assert "python -m difftune.hub.export --pipeline" in str(err.value)
    assert [c[0] for c in calls] == ["create", "upload"]
    assert calls[1][1]["repo_id"] == "someone/tiny-vintage"
    card = (tmp_path / "pipeline" / "README.md").read_text()
    assert "someone/tiny-vintage" in card and "library_name: diffusers" in card
    pipe = DDPMPipeline.from_pretrained(tmp_path / "pipeline")
    # the base samples at 16 px; the export at the resolution it was fine-tuned at
    assert pipe.unet.config.sample_size == 32 and "| resolution | 32 px |" in card


def test_push_to_hub_without_repo_id_is_rejected_first(tmp_path):
    with pytest.raises(DifftuneError, match="push_to_hub=true needs hub.repo_id"):
        train(compose_train("push_to_hub=true", output_dir=tmp_path))


def test_a_cosine_schedule_of_a_run_bounded_by_epochs_decays_over_its_steps(tmp_path):
    """`trainer.max_steps=-1 trainer.max_epochs=2`: the cosine's length is the run's 6 optimizer
    steps. Before, diffusers took num_training_steps=-1 as the length, and after the warm-up the
    lr went from full to 0 and back at every step."""
    cfg = compose_train(
        "model/lr_scheduler=cosine", "model.lr_scheduler.num_warmup_steps=2",
        "trainer.log_every_n_steps=1", "data.num_images=12", "data.val_size=0",
        "data.batch_size=2", "trainer.accumulate_grad_batches=2", output_dir=tmp_path,
    )  # fmt: skip
    cfg = shrink(cfg, steps=6)
    with open_dict(cfg):
        cfg.trainer.update(max_steps=-1, max_epochs=2)  # 12 images, 2 a batch, 2 batches a step
    train(cfg)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    lr = {int(r["step"]): float(r["lr-AdamW"]) for r in rows if r["lr-AdamW"]}
    cosine = [s / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(6)]
    assert lr == pytest.approx({s: 3e-4 * w for s, w in enumerate(cosine)}, rel=1e-6)


def test_metrics_follow_the_lr_and_ema_schedules_and_val_loss_is_the_emas(tmp_path):
    """metrics.csv's lr and ema/decay per step against their formulas; val/loss is the loss of
    the EMA weights (which the export holds); final_metrics.json is every metric's last value."""
    cfg = compose_train("ema=default", "model/lr_scheduler=cosine",
                        "model.lr_scheduler.num_warmup_steps=2", "trainer.log_every_n_steps=1",
                        output_dir=tmp_path)  # fmt: skip
    train(shrink(cfg, steps=6))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    lr = {int(r["step"]): float(r["lr-AdamW"]) for r in rows if r["lr-AdamW"]}
    cosine = [s / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(6)]
    assert lr == pytest.approx({s: 3e-4 * w for s, w in enumerate(cosine)}, rel=1e-6)
    decay = {int(r["step"]): float(r["ema/decay"]) for r in rows if r["ema/decay"]}
    assert decay == pytest.approx({s: ema_decay(s, 0.999, 1.0, 0.75) for s in range(6)}, rel=1e-6)

    last = {}
    for row in rows:
        last.update({k: float(v) for k, v in row.items() if v and k not in ("step", "epoch")})
    assert json.loads((tmp_path / "final_metrics.json").read_text()) == pytest.approx(last)
    assert_metrics_were_known(tmp_path, cfg)  # ema/decay and lr-AdamW among them

    datamodule, module, _ = build(shrink(cfg, steps=6))
    exported = UNet2DModel.from_pretrained(tmp_path / "pipeline" / "unet")
    module.unet.load_state_dict(exported.state_dict())
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    [validated] = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert validated["val/loss"] == pytest.approx(last["val/loss"], rel=1e-5)
