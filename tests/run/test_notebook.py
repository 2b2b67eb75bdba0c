"""Training from Python (a notebook): the command line's config, checks and run dir."""

import json
import os
import random

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from safetensors.torch import load_file

from difftune.config import compose_config
from difftune.errors import DifftuneError
from difftune.hub.export import export_checkpoint
from difftune.run.train import train
from helpers.compose import CONF
from helpers.faults import AtStep, run_with
from helpers.runs import UNET_WEIGHTS, losses, step_of, unet_weights

SHORT = [  # 2 steps of the embedded default, no grids or curves
    "trainer.max_steps=2", "trainer.val_check_interval=2", "data.num_images=48",
    "callbacks.sample_grid=null", "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false",
]  # fmt: skip


@pytest.fixture(autouse=True)
def notebook_anywhere(tmp_path, monkeypatch):
    """A notebook's working directory is not the repo (the configs come from the package), and a
    run's relative paths (outputs/train/resume, its index for resume=true) land there."""
    monkeypatch.chdir(tmp_path)


def test_a_notebook_run_leaves_the_run_dir_a_command_line_run_leaves(tmp_path):
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


def test_the_default_output_dir_is_the_command_lines(tmp_path):
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


def test_overrides_from_a_generator_and_two_default_dirs_in_one_second(tmp_path):
    cfg = compose_config("train", (o for o in ["trainer.max_steps=7"]))
    assert cfg.trainer.max_steps == 7  # not the default: the generator was read once, and used
    configs = [compose_config("train", [f"model.optimizer.lr={lr}"]) for lr in (1e-4, 3e-4)]
    first, second = (c.paths.output_dir for c in configs)
    assert first != second and cfg.paths.output_dir not in (first, second)


def test_resume_true_from_python_continues_in_the_run_dir_of_its_checkpoint(tmp_path):
    every_step = [*SHORT, "trainer.log_every_n_steps=1"]
    train(compose_config("train", every_step, output_dir="first"))
    cfg = compose_config("train", [*every_step, "trainer.max_steps=4", "resume=true"])
    assert cfg.paths.output_dir == str(tmp_path / "first")
    train(cfg)
    assert sorted(losses(tmp_path / "first")) == [0, 1, 2, 3]  # one metrics.csv for the run


def test_a_notebooks_own_hydra_is_kept_and_where_keys_and_flags_are_refused(tmp_path):
    initialize_config_dir(config_dir=str(CONF), version_base="1.3")  # the user's, not in a with
    try:
        cfg = compose_config("sample", ["num_images=2"], output_dir=tmp_path / "s")
        assert cfg.num_images == 2
        assert GlobalHydra.instance().is_initialized()  # theirs, back
        assert compose("sample").num_images == 16
    finally:
        GlobalHydra.instance().clear()
    with pytest.raises(DifftuneError, match=r"^paths\.output_dir=/x: where a run writes is "):
        compose_config("train", ["paths.output_dir=/x"], output_dir=tmp_path / "t")
    with pytest.raises(DifftuneError, match=r"^overrides: '-m' is a command-line flag"):
        compose_config("train", ["-m", "seed=1,2"], output_dir=tmp_path / "t")


def test_a_value_set_after_composing_is_the_command_lines_one_line(tmp_path):
    cfg = compose_config("train", SHORT, output_dir=tmp_path / "run")
    cfg.data.batch_size = 0
    with pytest.raises(DifftuneError) as err:
        train(cfg)
    assert str(err.value) == "data.batch_size=0 must be an integer >= 1"


def test_ctrl_c_in_a_notebook_is_a_keyboard_interrupt_that_says_where_to_resume(tmp_path):
    def ctrl_c(trainer) -> None:
        raise KeyboardInterrupt

    cfg = compose_config("train", [*SHORT, "trainer.max_steps=4"], output_dir=tmp_path / "run")
    with pytest.raises(KeyboardInterrupt) as stop:  # not Lightning's SystemExit(1)
        run_with(cfg, AtStep(2, ctrl_c))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert str(stop.value) == f"training stopped by Ctrl-C at step 2; resume with ckpt_path={ckpt}"
    assert step_of(ckpt) == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Ctrl-C at step 2: saved" in log  # train.log, as a command-line run writes it


def test_a_notebook_run_gives_the_random_state_and_environment_back(tmp_path, monkeypatch):
    """seed_everything re-seeds every generator and sets PL_GLOBAL_SEED: the notebook's next
    cell used to draw seed 0's numbers."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    before = (torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    train(compose_config("train", SHORT, output_dir=tmp_path / "run"))
    assert torch.equal(torch.random.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    assert "PL_GLOBAL_SEED" not in os.environ
