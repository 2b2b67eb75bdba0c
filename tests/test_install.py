"""A non-editable install (`pip install <repo>`, a built wheel): the configs travel inside the
package, and the commands and `compose_config` work from any directory, not only a checkout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from shutil import ignore_patterns

import pytest

from helpers.compose import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """difftune's wheel, built from this checkout and installed alone in a directory put first
    on PYTHONPATH (its dependencies are the venv's); the `bin/` of its commands."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # what the wheel is built from (setuptools' build/ lands there)
    shutil.copytree(ROOT / "src", source / "src", symlinks=True, ignore=ignore_patterns(
        "__pycache__", "*.egg-info"))  # fmt: skip
    shutil.copytree(ROOT / "conf", source / "conf")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "wheel", source],
        check=True,
        cwd=tmp,
    )
    (wheel,) = (tmp / "wheel").glob("difftune-*.whl")
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    return site, env


def run(args: list, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_the_configs_and_imports_from_them(installed, tmp_path):
    site, env = installed
    code = "import difftune.config as c; print(c.__file__); print(c.CONF)"
    module, conf = run([sys.executable, "-c", code], tmp_path, env).stdout.split()
    assert Path(module).is_relative_to(site) and Path(conf) == site / "difftune" / "conf"
    shipped = sorted(p.relative_to(site / "difftune" / "conf") for p in Path(conf).rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*.yaml"))
    assert not (site / "difftune" / "conf").is_symlink()  # a copy, not a link to the checkout


def test_the_installed_commands_train_and_sample_in_the_working_directory(installed, tmp_path):
    site, env = installed
    train = run(
        [site / "bin" / "difftune-train", "trainer.max_steps=2", "callbacks.sample_grid=null",
         "callbacks.loss_curve=null", "+trainer.enable_progress_bar=false"],
        tmp_path, env,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs" / "train").glob("20*")
    assert "data synthetic: 512 images" in (run_dir / "train.log").read_text()
    assert (run_dir / "pipeline" / "model_index.json").is_file()

    sample = run(
        [site / "bin" / "difftune-sample", f"pretrained={run_dir}", "num_images=2",
         "num_inference_steps=2"],
        tmp_path, env,
    )  # fmt: skip
    assert sample.returncode == 0, sample.stderr[-2000:]
    (sample_dir,) = (tmp_path / "outputs" / "sample").glob("20*")
    assert sorted(p.name for p in (sample_dir / "images").iterdir()) == ["0000.png", "0001.png"]
    assert (sample_dir / "sample.log").is_file()

    bad = run([site / "bin" / "difftune-train", "model.optimizer.lr=-1"], tmp_path, env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: model.optimizer.lr=-1 must be a number > 0 and finite (fine-tuning uses ~1e-5)"
    ]


def test_compose_config_works_from_a_wheel_install(installed, tmp_path):
    _, env = installed
    code = (
        "from difftune.config import compose_config\n"
        "cfg = compose_config('train', ['trainer.max_steps=7'])\n"
        "print(cfg.trainer.max_steps, cfg.model._target_)\n"
    )
    result = run([sys.executable, "-c", code], tmp_path, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["7", "difftune.core.module.DiffusionFineTuner"]
