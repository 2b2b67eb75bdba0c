"""Training from Python (a notebook): the command line's config, checks and run dir."""

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from difftune.config import compose_config
from difftune.errors import DifftuneError
from difftune.hub.export import export_checkpoint
from difftune.run.train import train
from helpers.runs import UNET_WEIGHTS, unet_weights

SHORT = [  # 2 steps of the embedded default, no grids or curves
    "trainer.max_steps=2", "trainer.val_check_interval=2", "data.num_images=48",
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip


def test_a_notebook_run_leaves_the_run_dir_a_command_line_run_leaves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a notebook anywhere: the configs come from the package's repo
    cfg = compose_config("train", [*SHORT, "model.optimizer.lr=3e-4"], output_dir="nb_run")
    run = tmp_path / "nb_run"
    assert cfg.paths.output_dir == str(run)
    metrics = train(cfg)
    assert metrics["train/loss"] > 0 and "val/loss" in metrics
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.model.optimizer.lr == 3e-4 and saved.paths.output_dir == str(run)
    info = json.loads((run / "run_info.json").read_text())
    assert info["versions"]["torch"] == torch.__version__
    assert OmegaConf.load(run / "config_resolved.yaml").trainer.max_steps == 2
    # the export command rebuilds the UNet from the run's .hydra/config.yaml, as for a CLI run
    exported = export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "again")
    again = load_file(exported / UNET_WEIGHTS)
    assert all(torch.equal(again[k], v) for k, v in unet_weights(run).items())


def test_the_default_output_dir_is_the_command_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("sample", ["num_images=2"])
    out = cfg.paths.output_dir
    assert out.startswith(str(tmp_path / "outputs" / "sample" / "20")), out


def test_bad_values_are_the_command_lines_one_line_before_anything_loads(tmp_path):
    with pytest.raises(DifftuneError) as err:
        compose_config("train", ["hardware=5"], output_dir=tmp_path / "a")
    valid = "cpu, ddp_cpu, gpu, multi_gpu, slurm"
    assert str(err.value) == f"hardware=5: no such option; valid: {valid}"
    with pytest.raises(DifftuneError, match=r"^trainer\.max_steps=2\.5 must be an integer"):
        compose_config("train", ["trainer.max_steps=2.5"], output_dir=tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "grid.png").write_bytes(b"earlier")
    with pytest.raises(DifftuneError) as err:
        compose_config("sample", [], output_dir=tmp_path / "c")
    assert str(err.value).startswith(f"output_dir={tmp_path / 'c'} already holds files (grid.png)")
    with pytest.raises(DifftuneError, match=r"^name='eval': no such entry point; valid: train"):
        compose_config("eval")
    with pytest.raises(DifftuneError, match=r"^overrides='seed=1': pass a list of key=value"):
        compose_config("train", "seed=1")
