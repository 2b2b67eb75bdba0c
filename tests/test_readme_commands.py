"""Every `python train.py` / `sample.py` / `demo.py` command of the README, as a user pastes it.

Each one is composed for every job (the entry points' preflight); the ones that can run offline
run in-process, shortened; each `$ command` followed by an `error:` line gives that line.
"""

import math
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import difftune.run.preflight as preflight
from difftune.demo.checks import check_demo_config
from difftune.run.cli import exit_on_user_error
from difftune.run.preflight import check_command_line
from difftune.run.sample_images import sample_images
from difftune.run.train import train
from helpers.compose import CONF, ROOT, compose_sample, compose_train, shrink, shrink_sample

ENTRY = re.compile(r"^(?:\$ )?(?:\w+=\S+ )*python (train|sample|demo)\.py\b")
NEEDS_HUB_OR_GPU = re.compile(
    r"^(experiment=|model=(ddpm|wikiart|pretrained)|data=(vintage_faces|wikiart|hf)\b|"
    r"hardware=(gpu|multi_gpu|slurm|ddp_cpu)|logger=wandb|push_to_hub=true|guidance=clip|"
    r"callbacks.kid.features=(clip|inception)|device=cuda|torchrun)"
)
PLACEHOLDER = re.compile(r"<[^>]+>|/path/|\.\.\.")


def readme_commands() -> tuple[list[str], list[tuple[str, str]]]:
    """(commands, [(command, expected error line)]) from code blocks and table cells."""
    lines = (ROOT / "README.md").read_text().replace("\\\n", " ").splitlines()
    commands, errors, in_block = [], [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_block = not in_block
            continue
        spans = [line.strip()] if in_block else re.findall(r"`([^`]+)`", line)
        for span in spans:
            if not ENTRY.match(span):
                continue
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if in_block and span.startswith("$ ") and following.startswith("error: "):
                errors.append((span[2:], following))
            else:
                commands.append(span.removeprefix("$ "))
    return commands, errors


COMMANDS, ERRORS = readme_commands()
COMMANDS = list(dict.fromkeys(COMMANDS))  # each distinct command once


def split(command: str) -> tuple[str, list[str], dict[str, str]]:
    """(script, overrides, environment) of a shell command line."""
    words = [re.sub(r"<[^<>]*>", "x", w) for w in shlex.split(command, comments=True)]
    words = [w for w in words if "<" not in w and ">" not in w]  # `<same overrides>`: prose
    env = {}
    while "=" in words[0] and not words[0].startswith("python"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "python", command
    return words[1].removesuffix(".py"), words[2:], env


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 20 and len(ERRORS) >= 10
    assert any("guidance.prompt=" in c for c in COMMANDS)  # the comma prompt is among them


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_composes_for_every_job(command, monkeypatch):
    script, overrides, _ = split(command)
    monkeypatch.setattr(preflight, "cuda_available", lambda: True)  # GPU examples too
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "readme")  # torchrun's examples
    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}")  # SLURM's
    check_command_line(CONF, script, overrides)


# run here: not a sweep (tests/run/test_sweeps.py), not resume=true (it needs an earlier run:
# tests/run/test_resume.py), nothing from the Hub or a GPU, no placeholder
RUNNABLE = [
    c
    for c in COMMANDS
    if " -m " not in f" {c} "
    and not PLACEHOLDER.search(c)
    and not any(NEEDS_HUB_OR_GPU.match(word) for word in split(c)[1])
    and not any(w.startswith(("--", "sweep=", "resume=")) for w in split(c)[1])
    and split(c)[0] != "demo"  # a server: tests/demo/ drive it in a browser
]


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE)
def test_every_offline_readme_command_runs_shortened(command, tmp_path):
    script, overrides, _ = split(command)
    if script == "sample":
        cfg = shrink_sample(compose_sample(*overrides, output_dir=tmp_path))
        written = sample_images(cfg)
        if cfg.get("plot") == "schedules":
            assert written == tmp_path / "schedules.png" and written.is_file()
            return
        expected = {"grid.png", "progression.png", "images"}
        if cfg.guidance is not None:  # the same noise unguided, side by side with the guided
            expected |= {"grid_unguided.png", "comparison.png"}
        assert expected <= {p.name for p in tmp_path.iterdir()}
        assert len(list((tmp_path / "images").glob("*.png"))) == cfg.num_images
        return
    cfg = shrink(compose_train(*overrides, output_dir=tmp_path), steps=2)
    with open_dict(cfg):
        if cfg.get("callbacks") and cfg.callbacks.get("kid"):
            cfg.callbacks.kid.update(num_samples=8, num_inference_steps=2)
            cfg.callbacks.kid.cache_dir = str(tmp_path / "kid_cache")  # not the checkout's
    metrics = train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "pipeline" / "model_index.json").is_file()
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    if cfg.get("callbacks") and cfg.callbacks.get("kid"):
        features = cfg.callbacks.kid.features
        assert math.isfinite(metrics[f"val/kid_{features}"])


def compose_demo(*overrides: str, output_dir) -> DictConfig:
    """The real demo config, writing to `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("demo", overrides=[f"paths.output_dir={output_dir}", *overrides])


def matches(got: str, expected: str) -> bool:
    """The README's line, where `(...)` and `...` stand for text that varies."""
    parts = [re.escape(p) for p in re.split(r"\(\.\.\.\)|\.\.\.", expected)]
    return re.fullmatch(r".*?".join(parts), got) is not None


@pytest.mark.parametrize(("command", "expected"), ERRORS)
def test_every_readme_error_example_is_the_line_a_user_gets(
    command, expected, tmp_path, monkeypatch, capsys
):
    script, overrides, env = split(command)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(preflight, "cuda_available", lambda: False)  # "no GPU" examples
    monkeypatch.chdir(ROOT)
    try:
        check_command_line(CONF, script, overrides)
    except Exception as err:  # what the entry point prints, then exits 2
        line = f"error: {err}"
    else:
        compose, job = {
            "sample": (compose_sample, sample_images),
            "train": (compose_train, train),
            "demo": (compose_demo, check_demo_config),
        }[script]
        cfg = compose(*overrides, output_dir=tmp_path)
        with pytest.raises(SystemExit) as stop:
            exit_on_user_error(job)(cfg)
        assert stop.value.code == 2
        line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("error: "))
    assert matches(line, expected), f"\nREADME: {expected}\ngot:    {line}"


def test_the_test_sees_what_a_changed_message_would_be():
    assert matches("error: a (b c); d", "error: a (...); d")
    assert not matches("error: a (b c); e", "error: a (...); d")
    assert Path(ROOT / "README.md").is_file()
