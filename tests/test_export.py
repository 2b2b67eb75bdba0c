"""Export side of a fine-tune: model card, push to the Hub, checkpoint -> pipeline command."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from conftest import make_tiny_unet
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import OmegaConf
from PIL import Image
from test_train import compose_train, shrink

import difftune.hub.push as hub
from difftune.errors import DifftuneError
from difftune.hub.export import main
from difftune.hub.model_card import write_model_card
from difftune.run.train import train

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- model card


def card_args(tmp_path: Path, **overrides) -> dict:
    grid = tmp_path / "grid_step_000300.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(grid)
    args = dict(
        base_model="google/ddpm-celebahq-256", dataset="huggan/vintage-faces", steps=300,
        effective_batch=16, lr=1e-5, precision="bf16-mixed", ema=0.999,
        metrics={"train/loss": 0.0312, "val/loss": 0.04567}, sample_grid=grid,
    )  # fmt: skip
    args.update(overrides)
    return args


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_model_card_has_front_matter_facts_grid_and_load_lines(tmp_path):
    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    card = write_model_card(pipe, **card_args(tmp_path), image_size=128, repo_id="me/vintage-ddpm")
    assert card == pipe / "README.md"
    meta, body = split_card(card.read_text())
    assert meta["library_name"] == "diffusers"
    assert meta["tags"] == ["pytorch", "diffusers", "unconditional-image-generation", "difftune"]
    assert meta["base_model"] == "google/ddpm-celebahq-256"
    assert meta["datasets"] == ["huggan/vintage-faces"]
    assert "license" not in meta
    for fact in [
        "google/ddpm-celebahq-256", "huggan/vintage-faces", "| steps | 300 |",
        "| effective batch | 16 |", "| learning rate | 1e-05 |", "| precision | bf16-mixed |",
        "| EMA | on (decay 0.999) |", "| train/loss | 0.0312 |", "| val/loss | 0.04567 |",
        "| resolution | 128 px |",
    ]:  # fmt: skip
        assert fact in body, fact
    lines = body.splitlines()
    load = lines.index("from diffusers import DDPMPipeline")
    assert lines[load + 1] == 'pipe = DDPMPipeline.from_pretrained("me/vintage-ddpm")'
    assert lines[load + 2] == "image = pipe().images[0]"
    assert "![samples](samples.png)" in body
    assert (pipe / "samples.png").read_bytes() == card_args(tmp_path)["sample_grid"].read_bytes()


def test_model_card_for_a_local_base_without_ema_grid_or_repo(tmp_path, tiny_pipeline_dir):
    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    args = card_args(
        tmp_path, base_model=str(tiny_pipeline_dir), dataset=str(tmp_path / "images"), ema=None,
        sample_grid=None, metrics={}, precision="32-true",
    )  # fmt: skip
    card = write_model_card(pipe, **args, license="mit")
    meta, body = split_card(card.read_text())
    assert "base_model" not in meta and "datasets" not in meta  # local paths are not hub ids
    assert str(tiny_pipeline_dir) not in card.read_text()  # nor written into a shareable card
    assert "| base model | `a local pipeline (tiny_pipeline)` |" in body
    assert "| resolution | unknown |" in body
    assert meta["license"] == "mit"
    assert "| EMA | off |" in body and "No metrics were logged." in body
    assert f'DDPMPipeline.from_pretrained("{pipe.resolve()}")' in body
    assert "samples.png" not in body and not (pipe / "samples.png").exists()
    with pytest.raises(DifftuneError, match="does not exist"):
        write_model_card(pipe, **card_args(tmp_path, sample_grid=tmp_path / "none.png"))


def test_model_card_does_not_tag_the_embedded_base_as_a_hub_model(tmp_path):
    pipe = tmp_path / "pipeline"
    pipe.mkdir()
    card = write_model_card(pipe, **card_args(tmp_path, base_model="difftune/tiny_base"))
    meta, body = split_card(card.read_text())
    assert "base_model" not in meta and "difftune/tiny_base" in body


# ----------------------------------------------------------------------------- push to hub


@pytest.fixture
def exported(tmp_path, tiny_pipeline_dir) -> Path:
    """A complete local export: the pipeline plus its card."""
    pipe = tmp_path / "export"
    shutil.copytree(tiny_pipeline_dir, pipe)
    write_model_card(pipe, **card_args(tmp_path))
    return pipe


def test_push_to_hub_creates_the_repo_then_uploads_the_folder(exported, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(
        hub, "create_repo", lambda *a, **kw: calls.append(("create", a, kw)) or "https://hf.co/me/x"
    )
    monkeypatch.setattr(hub, "upload_folder", lambda *a, **kw: calls.append(("upload", a, kw)))
    with caplog.at_level(logging.DEBUG):
        url = hub.push_to_hub(exported, "me/x", private=True, token="hf_secret123")
    assert url == "https://hf.co/me/x"
    assert calls[0] == (
        "create", ("me/x",), dict(exist_ok=True, private=True, token="hf_secret123")
    )  # fmt: skip
    name, args, kwargs = calls[1]
    assert name == "upload" and not args
    assert kwargs["repo_id"] == "me/x" and Path(kwargs["folder_path"]) == exported
    assert kwargs["token"] == "hf_secret123" and kwargs["commit_message"]
    assert "hf_secret123" not in caplog.text
    files = [p for p in exported.rglob("*") if p.is_file()]
    assert not any(b"hf_secret123" in p.read_bytes() for p in files)


def test_push_to_hub_refuses_an_incomplete_export(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "create_repo", lambda *a, **kw: pytest.fail("pushed"))
    with pytest.raises(DifftuneError, match="not a complete pipeline export"):
        hub.push_to_hub(tmp_path, "me/x")


def check_push_error(err: DifftuneError, exported: Path, token: str | None = None) -> None:
    message = str(err)
    assert "\n" not in message
    assert f"the local export at {exported} is complete" in message
    assert "`hf auth login`" in message and "HF_TOKEN" in message  # huggingface_hub's CLI now
    assert f"python -m difftune.hub.export --pipeline {exported} --push-to-hub me/x" in message
    assert f"`hf upload me/x {exported}`" in message
    if token:
        assert token not in message


@pytest.mark.parametrize(
    "error",
    [
        huggingface_hub.errors.LocalTokenNotFoundError("Token is required\nsecond line"),
        OSError("hf_secret123 rejected"),
        ConnectionError("Name or service not known"),
    ],
)
def test_push_to_hub_failure_says_the_export_is_complete(exported, monkeypatch, error):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(hub, "create_repo", failing)
    with pytest.raises(DifftuneError) as info:
        hub.push_to_hub(exported, "me/x", token="hf_secret123")
    check_push_error(info.value, exported, token="hf_secret123")


def test_push_to_hub_offline_for_real(exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DifftuneError, match="OfflineModeIsEnabled") as info:
        hub.push_to_hub(exported, "me/x")
    check_push_error(info.value, exported)


# ----------------------------------------------------------------------------- export command


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    """A 3-step EMA fit of a tiny pipeline; `.hydra/config.yaml` saved as Hydra would."""
    tmp = tmp_path_factory.mktemp("ema_run")
    base = tmp / "base"
    DDPMPipeline(
        unet=make_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)
    ).save_pretrained(base)
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
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
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
        (lambda p: p.write_text("not a checkpoint"), "cannot be read"),
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
