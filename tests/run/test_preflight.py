"""Bad input before any job starts: every job of a sweep composed up front, one line each."""

import hydra
import pytest

import difftune.run.preflight as preflight
from difftune.errors import DifftuneError
from difftune.guidance import ColorLoss, GuidanceError
from difftune.run.cli import multirun_flag_first
from difftune.run.job_checks import JOB_CHECKS
from difftune.run.preflight import check_command_line
from helpers.cli import run_cli
from helpers.compose import CONF, compose_sample, compose_train


def test_sweep_over_an_unknown_key_is_one_line_before_any_job(tmp_path):
    result = run_cli(
        "-m", "model.optimizer.lr=1e-4,1e-3", "model.lr=3", f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.lr=3: no such key; '+model.lr=3' adds a new one, and "
        "`python train.py --cfg job` lists the keys there are"
    ]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # no job started


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", ["-m", "hardware=tpu", "seed=0,1"])
    assert str(err.value) == (
        "hardware=tpu: no such option; valid: cpu, ddp_cpu, gpu, multi_gpu, slurm"
    )


def test_multi_gpu_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(preflight, "cuda_available", lambda: False)
    with pytest.raises(DifftuneError, match=r"^hardware=multi_gpu: trainer.accelerator=gpu but no"):
        check_command_line(CONF, "train", ["hardware=multi_gpu"])


def test_an_experiment_that_sets_a_gpu_is_named_not_the_key_it_set(monkeypatch):
    monkeypatch.setattr(preflight, "cuda_available", lambda: False)
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", ["experiment=vintage_faces"])
    assert str(err.value).startswith(
        "experiment=vintage_faces (it sets hardware=gpu): trainer.accelerator=gpu but no CUDA GPU"
    )
    assert "add hardware=cpu" in str(err.value)
    with pytest.raises(DifftuneError, match=r"^hardware=gpu: "):  # typed: named as typed
        check_command_line(CONF, "train", ["experiment=vintage_faces", "hardware=gpu"])


@pytest.mark.parametrize("script", ["train", "sample"])
def test_a_comma_without_m_shows_the_quoting_or_the_sweep_flag(script):
    """The README's CLIP prompt as bash passes it unquoted: Hydra would call it ambiguous."""
    prompt = "Red Rose, red flower painting"
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, script, ["guidance=clip", f"guidance.prompt={prompt}"])
    assert str(err.value) == (
        f"guidance.prompt={prompt}: Hydra reads a comma as a list of values to sweep; for text "
        "with commas quote it for Hydra inside the shell's quotes: "
        f"'guidance.prompt=\"{prompt}\"'; to sweep, add -m"
    )
    check_command_line(CONF, script, ["guidance=clip", f'guidance.prompt="{prompt}"'])  # quoted


def test_a_comma_in_a_list_key_says_brackets_and_the_bracketed_form_builds(tmp_path):
    """Quoting (the prompt's hint) made `target_rgb` a string, then float() of each character."""
    args = ["guidance=color", "guidance.target_rgb=0.1,0.9,0.5"]
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "sample", args)
    assert str(err.value) == (
        "guidance.target_rgb=0.1,0.9,0.5: Hydra reads a comma as a list of values to sweep; "
        "guidance.target_rgb is a list: write it in brackets, guidance.target_rgb=[0.1,0.9,0.5]; "
        "to sweep, add -m"
    )
    fixed = ["guidance=color", "guidance.target_rgb=[0.1,0.9,0.5]"]
    check_command_line(CONF, "sample", fixed)
    guide = hydra.utils.instantiate(compose_sample(*fixed, output_dir=tmp_path).guidance)
    assert guide.loss.target_rgb == (0.1, 0.9, 0.5)
    with pytest.raises(GuidanceError, match=r"^ColorLoss target_rgb='0.1,0.9,0.5': expected 3 "):
        ColorLoss("0.1,0.9,0.5")


def test_a_config_that_sets_multirun_takes_a_sweep_without_m():
    check_command_line(CONF, "train", ["sweep=lr", "model.optimizer.lr=1e-4,3e-4"])


def test_an_optuna_search_range_is_checked_at_its_ends_and_refused_by_the_basic_sweeper():
    """Before: `BasicSweeper does not support sweep type : INTERVAL_SWEEP` from the preflight,
    with a traceback; and without -m the comma in `interval(a, b)` was called a sweep."""
    checks = JOB_CHECKS["train"]
    check_command_line(CONF, "train", ["sweep=lr_optuna",  # the config sets MULTIRUN: no -m
                                       "model.optimizer.lr=tag(log, interval(1e-4, 1e-3))"],
                       checks)  # fmt: skip
    with pytest.raises(DifftuneError, match=r"^model.optimizer.lr=-1.0 must be a number > 0"):
        low = ["sweep=lr_optuna", "model.optimizer.lr=interval(-1, 1e-3)"]
        check_command_line(CONF, "train", low, checks)
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", ["-m", "model.optimizer.lr=interval(1e-4,1e-3)"])
    assert str(err.value) == (
        "model.optimizer.lr=interval(1e-4,1e-3): a search range for an optimising sweeper "
        "(sweep=lr_optuna, hydra/sweeper=optuna); Hydra's basic sweeper takes values: "
        "model.optimizer.lr=1e-4,3e-4 or range(1,5)"
    )


def test_ddp_in_a_sweep_needs_a_rank_launcher(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(DifftuneError, match="hardware=ddp_cpu with -m: .* torchrun"):
        check_command_line(CONF, "train", ["-m", "hardware=ddp_cpu", "seed=0,1"])
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")  # torchrun made the ranks: fine
    check_command_line(CONF, "train", ["-m", "hardware=ddp_cpu", "seed=0,1"])


def test_slurm_without_the_submitit_launcher_is_one_line():
    # What Hydra says when the launcher plugin is not installed: its config is not found.
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", ["hardware=slurm", "hydra/launcher=submitit_gone"])
    assert str(err.value) == (
        "hardware=slurm needs the Hydra submitit launcher: pip install hydra-submitit-launcher "
        "(it is in difftune's dependencies)"
    )


def test_a_slurm_sweep_where_there_is_no_slurm_names_the_local_launcher(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)  # no sbatch here
    args = ["-m", "hardware=slurm", "model.optimizer.lr=1e-5,3e-5", f"hydra.sweep.dir={tmp_path}"]
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "train", args)
    assert str(err.value) == (
        "hardware=slurm: no SLURM on this machine (sbatch not found); submit from a cluster's "
        "login node, or run the jobs here: hydra/launcher=submitit_local instead of hardware=slurm"
    )
    here = ["-m", "hydra/launcher=submitit_local", *args[2:]]
    check_command_line(CONF, "train", here)  # that one passes


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("train", ["sweep=cfg_scale"], "sweep=cfg_scale: not a sweep of train.py (it sweeps "
         "cfg_scale, a key train.py has not); train.py's sweeps: guidance_scale, lr, lr_optuna"),
        ("sample", ["sweep=lr"], "sweep=lr: not a sweep of sample.py (it sets keys or config "
         "groups sample.py has not); sample.py's sweeps: cfg_scale, guidance_scale"),
        ("train", ["model=_base"], "model=_base: no such option; valid: ddpm_bedroom_256, "
         "ddpm_celebahq_256, pretrained, scratch, tiny_base, wikiart_from_bedrooms"),
    ],
)  # fmt: skip
def test_the_other_scripts_sweep_and_a_base_config_are_one_line(script, argv, message):
    """Before: Hydra's five lines and exit 1 (train.py sweep=cfg_scale), "callbacks: no such
    key" (sample.py sweep=lr), a traceback (model=_base, a file the models build on)."""
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, script, argv)
    assert str(err.value) == message


def test_a_sweep_a_config_sets_checks_each_of_its_jobs(tmp_path):
    """sweep=guidance_scale sweeps guidance.scale 0,20,40,80 itself: each job is composed and
    checked with its own value, as the jobs of a command-line sweep are."""
    seen = []

    def check(cfg, job_dir, key):
        seen.append((cfg.guidance.scale, job_dir.name))
        JOB_CHECKS["sample"](cfg, job_dir, key)

    check_command_line(CONF, "sample", ["sweep=guidance_scale", f"hydra.sweep.dir={tmp_path}"],
                       check)  # fmt: skip
    assert seen == [(0, "0"), (20, "1"), (40, "2"), (80, "3")]
    with pytest.raises(DifftuneError, match=r"^guidance.target_rgb=\[2, 0, 0\]: expected 3"):
        check_command_line(CONF, "sample", ["sweep=guidance_scale", "guidance.target_rgb=[2,0,0]",
                                            f"hydra.sweep.dir={tmp_path}"], check)  # fmt: skip


@pytest.mark.parametrize(
    "script, group, options",
    [("sample", "scheduler", "ddim,ddpm"), ("sample", "guidance", "color,clip"),
     ("train", "hardware", "cpu,gpu"), ("train", "data", "synthetic,imagefolder")],
)  # fmt: skip
def test_a_list_of_single_things_is_one_line_naming_the_sweep(script, group, options):
    """Hydra merges `scheduler=[ddim,ddpm]` into one scheduler, the last one's: sample.py ran
    DDPM without a word; `guidance=[color,clip]` built CLIP guidance with a colour key."""
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, script, [f"{group}=[{options}]"])
    assert str(err.value) == (
        f"{group}=[{options}]: Hydra merges a list of options into one {group} (the last one's "
        f"settings win where they overlap); pick one, or run each: -m {group}={options}"
    )


@pytest.mark.parametrize("overrides", [["logger=[csv,tensorboard]"], ["callbacks=[default,kid]"]])
def test_a_list_of_named_entries_composes_them_all(overrides, tmp_path):
    """Loggers and callbacks are sets of named entries: a list takes them all."""
    check_command_line(CONF, "train", [*overrides, f"hydra.run.dir={tmp_path}"])
    cfg = compose_train(*overrides, output_dir=tmp_path)
    names = {"logger": {"csv", "tensorboard"}, "callbacks": {"kid", "sample_grid"}}
    group = overrides[0].split("=")[0]
    assert names[group] <= set(cfg[group])


def test_m_after_the_overrides_is_a_sweep_as_before_them(tmp_path):
    """Hydra's parser took `seed=0,1 -m lr=...` as `unrecognized arguments` (usage, two lines);
    `-m` anywhere is the sweep flag, so the sweep's bad value is the line a user gets."""
    result = run_cli("seed=0,1", "-m", "model.optimizer.lr=-1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.optimizer.lr=-1 must be a number > 0 and finite (fine-tuning uses ~1e-5)"
    ]
    assert multirun_flag_first(["a=1", "--multirun", "b=2"]) == ["--multirun", "a=1", "b=2"]


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("sample", ["guidance.scale=3"], "guidance.scale=3: this run has no guidance, so no "
         "guidance.scale; choose one first: guidance=clip guidance.scale=3 (guidance options: "
         "clip, color)"),
        ("train", ["-m", "ema.decay=0.9,0.99"], "ema.decay=0.9,0.99: this run has no ema, so no "
         "ema.decay; choose one first: ema=default ema.decay=0.9,0.99 (ema options: default)"),
    ],
)  # fmt: skip
def test_a_key_of_a_group_the_run_has_not_chosen_says_choose_one(script, argv, message):
    """Hydra's advice was `+guidance.scale=3`, which adds a stray key and still no guidance."""
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, script, argv)
    assert str(err.value) == message
    with pytest.raises(DifftuneError, match=r"^guidance.prompt=x: no such key; '\+guidance"):
        check_command_line(CONF, "sample", ["guidance=color", "guidance.prompt=x"])  # chosen
