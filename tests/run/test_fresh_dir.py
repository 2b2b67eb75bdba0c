"""The default run dir is new for every run: runs started in the same second (a shell loop's
`&`) each get their own, where the second sampled over the first's images."""

import subprocess
import sys

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import difftune.run.fresh_dir as fresh
from helpers.compose import CONF, ROOT


def other_process(monkeypatch) -> None:
    """What a second process knows: none of this one's dirs."""
    monkeypatch.setattr(fresh, "_claimed", {})


def test_a_second_run_in_the_same_second_gets_its_own_dir(tmp_path, monkeypatch):
    for key in fresh.RANK_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    base = str(tmp_path / "outputs" / "sample" / "2026-11-27_11-13-09")
    other_process(monkeypatch)
    first = fresh.fresh_dir(base)
    assert first == base and fresh.fresh_dir(base) == base  # made once; the same every time
    other_process(monkeypatch)
    with fresh.choosing_only():  # the preflight: looks, makes nothing
        assert fresh.fresh_dir(base) == base and not (tmp_path / f"{base}_1").exists()
    assert fresh.fresh_dir(base) == f"{base}_1"
    other_process(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank of a run torchrun started: the run's dir
    assert fresh.fresh_dir(base) == base


def test_runs_write_to_it_and_the_preflight_makes_no_dir(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in ("train", "sample"):
            cfg = compose(name, return_hydra_config=True)
            raw = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
            assert raw.startswith("${difftune.fresh_dir:outputs/${task_name}/"), raw
    code = (
        "import os; os.chdir(os.sys.argv[1]); from difftune.run.preflight import "
        "check_command_line; from difftune.config import CONF; "
        "check_command_line(CONF, 'sample', []); print(sorted(os.listdir('.')))"
    )
    listed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert listed.stdout.strip() == "[]", listed.stderr[-2000:]
