"""What a newcomer sees: a progress line in log files, grid cost, no third-party noise, start-up."""

import logging
import os
import re
import subprocess
import sys

import pytest
from omegaconf import open_dict

from difftune.callbacks.grid_budget import plan_grids
from difftune.run.train import train
from helpers.compose import ROOT, shrink

ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
PROGRESS = re.compile(r"step (\d+)/8 loss \d+\.\d+ \d+\.\d img/s eta \d+:\d\d:\d\d$", re.MULTILINE)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[str, str]:
    """`train.py` with stdout and stderr sent to files, as under SLURM or `make train > log`."""
    tmp = tmp_path_factory.mktemp("logged")
    with open(tmp / "stdout", "w") as out, open(tmp / "stderr", "w") as err:
        result = subprocess.run(
            [sys.executable, "train.py", "trainer.max_steps=8",
             "callbacks.progress.every_n_steps=4", "data.num_images=48", "data.batch_size=4",
             "data.val_size=8", "data.image_size=16",
             "callbacks.sample_grid.num_images=2", "callbacks.sample_grid.num_inference_steps=2",
             f"hydra.run.dir={tmp / 'run'}", f"resume_dir={tmp}/resume_index"],
            cwd=ROOT, env=ENV, stdout=out, stderr=err,
        )  # fmt: skip
    stdout, stderr = (tmp / "stdout").read_text(), (tmp / "stderr").read_text()
    assert result.returncode == 0, stderr[-3000:]
    return stdout, stderr


@pytest.mark.slow
def test_a_log_file_gets_a_plain_progress_line_every_n_steps(logged_run):
    stdout, stderr = logged_run
    assert [int(step) for step in PROGRESS.findall(stdout)] == [4, 8], stdout
    assert "/-2" not in stdout + stderr and "it/s" not in stdout + stderr  # the rich bar's


@pytest.mark.slow
def test_a_run_prints_no_third_party_noise(logged_run):
    stdout, stderr = logged_run
    # Lightning's own lines once (through Hydra's console and train.log), not again on stderr
    assert (stdout + stderr).count("Seed set to 0") == 1, stderr
    for noise in ("Tip:", "litlogger", "exists and is not empty", "LeafSpec", "weights_only"):
        assert noise not in stdout + stderr, (noise, stderr)


def test_the_grid_budget_rule():
    # the smoke run: 2 steps of batch 8 x 2, grids of 16 images x 40 steps at start and end
    plan = plan_grids(16, 40, num_grids=2, panels=1, train_images=2 * 16, max_ratio=0.5)
    assert (plan.num_images, plan.num_inference_steps) == (4, 10)
    assert plan.ratio == pytest.approx(2 * 16 * 40 / (3 * 32))
    # the default run (300 steps of 16, a grid every 100): left as configured
    plan = plan_grids(16, 40, num_grids=5, panels=1, train_images=300 * 16, max_ratio=0.5)
    assert (plan.num_images, plan.num_inference_steps) == (16, 40)
    # switched off
    plan = plan_grids(16, 40, num_grids=2, panels=1, train_images=32, max_ratio=None)
    assert (plan.num_images, plan.num_inference_steps) == (16, 40)


def test_the_grid_logs_its_size_and_seconds_and_a_short_run_gets_a_cheaper_grid(cfg_train, caplog):
    cfg = shrink(cfg_train, steps=2)
    with open_dict(cfg):
        cfg.callbacks.sample_grid.update(num_images=16, num_inference_steps=40)
    with caplog.at_level(logging.INFO, logger="difftune.callbacks.sample_grid"):
        train(cfg)
    records = [r for r in caplog.records if r.name == "difftune.callbacks.sample_grid"]
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    for key in ("num_images", "num_inference_steps", "every_n_steps", "max_cost_ratio=null"):
        assert f"callbacks.sample_grid.{key}" in warned[0], warned[0]
    done = [r.getMessage() for r in records if "written" in r.getMessage()]
    assert len(done) == 2, done  # step 0 and step 2
    for line in done:
        assert re.search(r"4 images × 10 steps at 32 px.* in \d+\.\d s$", line), line


def test_importing_the_entry_points_leaves_optional_heavy_packages_alone():
    code = (
        "import sys, difftune.run.train, difftune.run.sample_images; "
        "print(' '.join(m for m in ('open_clip', 'timm', 'wandb') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == [], result.stdout + result.stderr
    code = (  # sampling needs neither Lightning nor torchmetrics nor pyplot
        "import sys, difftune.run.sample_images; "
        "print(' '.join(m for m in ('lightning', 'torchmetrics', 'matplotlib.pyplot') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.split() == [], result.stdout + result.stderr


@pytest.mark.parametrize(
    "script, override, message",
    [
        ("train.py", "model.optimizer.lr=-1", "model.optimizer.lr=-1 must be a number > 0"),
        ("train.py", "trainer.max_steps=abc", "trainer.max_steps='abc' must be an integer >= 1"),
        ("train.py", "data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
        ("train.py", "data.image_size=33", "data.image_size=33 cannot go through this UNet"),
        ("train.py", "model.snr_gamma=-1", "model.snr_gamma=-1 must be > 0"),
        ("train.py", "model.attention=flash", "model.attention='flash': expected one of sdpa"),
        ("train.py", "model.pretrained=/no/dir", "model.pretrained='/no/dir': no such directory"),
        ("train.py", "data=imagefolder", "data.data_dir=None: data=imagefolder needs the folder"),
        (
            "train.py",
            "data=imagefolder data.data_dir=src/difftune/conf",  # yaml files only
            "data.data_dir='src/difftune/conf' contains no image files (.jpg, .jpeg,",
        ),
        (
            "train.py",
            "data=imagefolder data.data_dir=docs data.label_column=label",  # pictures, no classes
            "data.data_dir='docs' holds ",
        ),
        # trained on 1 image of 20 (a warning among Lightning's lines)
        ("train.py", "data.num_images=20", "data.val_size=32: the data has 20 images, so none"),
        ("train.py", "data.style=sepia", "data.style='sepia' is not one of photo, vintage"),
        ("train.py", "model.conditioning=class", "model.conditioning=class needs labelled data"),
        ("train.py", "model.p_uncond=2", "model.p_uncond=2 must be in [0, 1)"),
        # a traceback at the first update (modulo 0), and a negative decay (an extrapolation)
        ("train.py", "ema=default ema.update_every_n_steps=0", "ema.update_every_n_steps=0 must"),
        ("train.py", "ema=default ema.power=-1", "ema.power=-1 must be a number > 0"),
        # a word is truthy: "maybe" pushed (or asked for a repo id), pinned memory, kept workers
        ("train.py", "push_to_hub=maybe", "push_to_hub='maybe': expected true or false"),
        ("train.py", "data.pin_memory=1", "data.pin_memory=1: expected true, false or null"),
        (
            "train.py",
            "experiment=conditional data.style=photo",  # one style: one class
            "model.conditioning=class: the data has one class (photo); a class-conditional",
        ),
        (
            "train.py",
            "model=scratch model.unet.block_out_channels=[64,128,256]",  # 2 lists still have 4
            "model.unet.block_out_channels=[64, 128, 256], model.unet.down_block_types=['Down",
        ),
        (
            "train.py",
            "model=scratch model.unet.block_out_channels=[48,64,64,128]",
            "model.unet.norm_num_groups=32 does not divide model.unet.block_out_channels=[48, 64",
        ),
        ("sample.py", "num_images=0", "num_images=0 must be an integer >= 1"),
        ("sample.py", "image_size=33", "image_size=33 cannot go through this UNet"),
        ("sample.py", "pretrained=/no/dir", "pretrained='/no/dir': no such directory"),
        ("sample.py", "precision=fp8", "precision=fp8: expected one of 32, bf16"),
        ("sample.py", "class_label=3", "class_label=3: pretrained=difftune/tiny_base has no"),
        ("sample.py", "num_inference_steps=0", "num_inference_steps=0 must be an integer >= 1"),
        (
            "sample.py",
            "scheduler=dpm_solver num_inference_steps=1000",
            "num_inference_steps=1000: more than DPMSolverMultistepScheduler takes on the",
        ),
        (
            "sample.py",
            "guidance=color guidance.schedule=cosine",
            "guidance.schedule='cosine': expected one of none, alpha_bar, sqrt_alpha_bar",
        ),
        ("sample.py", "guidance=clip guidance.n_cuts=0", "guidance.n_cuts=0: expected an integer"),
        ("sample.py", "scheduler=[ddim,ddpm]", "scheduler=[ddim,ddpm]: Hydra merges a list of"),
        ("train.py", "guidance=color guidance.target_rgb=[1,2]", "guidance.target_rgb=[1, 2]: ex"),
    ],
)
def test_a_bad_value_is_one_line_before_the_heavy_libraries_load(script, override, message):
    """A typo answers in about a second: torch, diffusers and Lightning take seconds to import."""
    code = (
        f"import runpy, sys; sys.argv = [{script!r}, *{override.split()!r}]\n"
        f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n    print('EXIT', stop.code)\n"
        "print('LOADED', ' '.join(m for m in ('diffusers', 'lightning', 'torch') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert result.stdout.splitlines()[-2:] == ["EXIT 2", "LOADED "], result.stdout  # none


@pytest.mark.parametrize(
    ("script", "groups"),
    [
        (
            "train.py",
            {
                "model": "ddpm_bedroom_256, ddpm_celebahq_256, pretrained, scratch, tiny_base, "
                "wikiart_from_bedrooms  (now: tiny_base)",  # no private `_base`
                "ema": "default  (now: null)",
                "sweep": "guidance_scale, lr, lr_optuna  (now: null)",
            },
        ),
        (
            "sample.py",  # its own groups only: no data, model or callbacks of train.py's
            {
                "guidance": "clip, color, none  (now: none)",
                "paths": "default  (now: default)",
                "scheduler": "ddim, ddpm, dpm_solver  (now: ddim)",
                "sweep": "cfg_scale, guidance_scale  (now: null)",
            },
        ),
    ],
)
def test_help_lists_the_scripts_own_groups_and_loads_no_training_stack(script, groups):
    code = (
        f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
        f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('LOADED', ' '.join(m for m in ('difftune.run.train', 'diffusers', 'open_clip', "
        "'lightning', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    section = result.stdout.split("== Config groups: group=option ==\n")[1].split("\n\n")[0]
    listed = dict(line.split(": ", 1) for line in section.splitlines())
    assert {k: listed.get(k) for k in groups} == groups, result.stdout
    if script == "sample.py":
        assert sorted(listed) == sorted(groups)
    assert result.stdout.strip().splitlines()[-1] == "LOADED", result.stdout[-500:]
