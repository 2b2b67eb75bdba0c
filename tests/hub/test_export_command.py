"""`python -m difftune.hub.export`: a checkpoint (EMA or raw weights) to a pipeline and card."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from diffusers import UNet2DModel
from omegaconf import OmegaConf

import difftune.hub.push as hub
from difftune.hub.export import main
from difftune.run.train import train
from helpers.compose import ROOT, compose_train, shrink
from helpers.model_cards import split_card
from helpers.models import save_tiny_pipeline


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    """A 3-step EMA fit of a tiny pipeline; `train` outside Hydra writes `.hydra/config.yaml`."""
    tmp = tmp_path_factory.mktemp("ema_run")
    base = tmp / "base"
    save_tiny_pipeline(base)
    run = tmp / "run"
    cfg = compose_train(
        f"model.pretrained={base}", "data.image_size=16", "ema=default", "ema.decay=0.5",
        "ema.warmup=false", "export_dir=null", output_dir=run,
    )  # fmt: skip
    threads = torch.get_num_threads()  # module scope: set up before the per-test thread fixture
    torch.set_num_threads(1)
    try:
        train(shrink(cfg, steps=3))
    finally:
        torch.set_num_threads(threads)
    return run


def exported_unet(path: Path) -> dict[str, torch.Tensor]:
    return UNet2DModel.from_pretrained(path, subfolder="unet").state_dict()


def assert_same_weights(exported: dict, checkpoint_weights: dict) -> None:
    weights = {k.removeprefix("unet."): v for k, v in checkpoint_weights.items()}
    assert weights.keys() == exported.keys()
    for key, value in weights.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)


def test_export_writes_the_ema_weights_and_raw_on_request(ema_run, tmp_path, capsys):
    ckpt = ema_run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)

    out = main([str(ckpt)])
    assert out == ema_run / "pipeline_from_last"
    assert capsys.readouterr().out.strip() == str(out)
    assert (out / "model_index.json").is_file()
    assert_same_weights(exported_unet(out), ema)

    out_raw = main([str(ckpt), "--raw", "--out", str(tmp_path / "raw")])
    assert out_raw == tmp_path / "raw"
    assert_same_weights(exported_unet(out_raw), raw)

    # a model card from the run's resolved config, like train.py's own export
    meta, body = split_card((out / "README.md").read_text())
    assert meta["library_name"] == "diffusers"
    for fact in ("| steps | 3 |", "| learning rate |", "| EMA | on (decay", "| resolution | 16 px"):
        assert fact in body, fact
    assert "| train/loss |" in body  # last.ckpt: the run's final metrics
    assert "| EMA | off |" in (out_raw / "README.md").read_text()
    assert UNet2DModel.load_config(out, subfolder="unet")["sample_size"] == 16


def test_export_outside_a_run_uses_base_or_the_checkpoint_hparams(ema_run, tmp_path):
    loose = tmp_path / "loose.ckpt"
    shutil.copyfile(ema_run / "checkpoints" / "last.ckpt", loose)
    ema = torch.load(loose, map_location="cpu", weights_only=True)["state_dict"]
    out = main([str(loose)])  # rebuilt from hyper_parameters["pretrained"]
    assert out == tmp_path / "pipeline_from_loose"
    assert_same_weights(exported_unet(out), ema)
    out = main([str(loose), "--base", str(ema_run.parent / "base"), "--out", str(tmp_path / "b")])
    assert_same_weights(exported_unet(out), ema)


def test_run_config_that_cannot_rebuild_the_unet_points_to_base(ema_run, tmp_path, capsys):
    run = tmp_path / "moved_run"
    shutil.copytree(ema_run / ".hydra", run / ".hydra")
    shutil.copytree(ema_run / "checkpoints", run / "checkpoints")
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.model.pretrained = str(tmp_path / "gone")
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    with pytest.raises(SystemExit):
        main([str(run / "checkpoints" / "last.ckpt")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot rebuild the UNet from" in err
    assert "no such directory" in err and "pass --base" in err
    out = main([str(run / "checkpoints" / "last.ckpt"), "--base", str(ema_run.parent / "base")])
    assert out == run / "pipeline_from_last"


def test_export_command_in_a_subprocess(ema_run, tmp_path):
    out = tmp_path / "sub"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ckpt = ema_run / "checkpoints" / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "difftune.hub.export", str(ckpt), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    ema = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert_same_weights(exported_unet(out), ema)


def test_checkpoint_from_another_architecture_is_one_line(tmp_path, tiny_pipeline_dir, capsys):
    other = UNet2DModel(
        sample_size=16, layers_per_block=1, block_out_channels=(8, 16, 16), norm_num_groups=8,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
    )  # fmt: skip
    ckpt = tmp_path / "other.ckpt"
    state = {f"unet.{k}": v for k, v in other.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"pretrained": None}}, ckpt)
    with pytest.raises(SystemExit) as info:
        main([str(ckpt), "--base", str(tiny_pipeline_dir)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "does not fit the UNet built from" in err and "missing keys" in err
    assert "unexpected keys" in err and "another architecture" in err
    assert not (tmp_path / "pipeline_from_other").exists()  # no partial export


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "bad.ckpt is a directory; pass a .ckpt file"),
        (lambda p: p.write_text("not a checkpoint"), "cannot be read"),
        (lambda p: p.write_text("hello world\n"), "cannot be read (not a torch file"),  # KeyError
        (
            lambda p: torch.save({"state_dict": {}, "x": Path("/")}, p),
            "holds a pathlib.PosixPath object",
        ),
        (lambda p: torch.save({"weights": {}}, p), "no state_dict"),
        (lambda p: torch.save({"state_dict": {}}, p), "no 'unet.*' weights"),
        (lambda p: torch.save({"state_dict": {"unet.w": torch.ones(1)}}, p), "no base model"),
    ],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, capsys, setup, message):
    ckpt = tmp_path / "bad.ckpt"
    setup(ckpt)
    with pytest.raises(SystemExit) as info:
        main([str(ckpt)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_push_failure_after_export_keeps_the_export(ema_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "pushed"
    ckpt = ema_run / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as info:
        main([str(ckpt), "--out", str(out), "--push-to-hub", "me/x"])
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out.strip() == str(out)
    assert (out / "model_index.json").is_file()
    assert f"the local export at {out} is complete" in captured.err

    calls = []
    monkeypatch.setattr(hub, "create_repo", lambda *a, **kw: calls.append(a) or "url")
    monkeypatch.setattr(hub, "upload_folder", lambda *a, **kw: calls.append(kw["folder_path"]))
    assert main(["--pipeline", str(out), "--push-to-hub", "me/x"]) == out
    assert calls == [("me/x",), str(out)]


def test_the_old_module_path_names_the_new_one():
    result = subprocess.run(
        [sys.executable, "-m", "difftune.export", "run/checkpoints/last.ckpt"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr == "error: python -m difftune.export is now python -m difftune.hub.export\n"
    )
