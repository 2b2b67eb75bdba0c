"""The GPU benchmarks at their CPU smoke size: they run, and what they compare holds."""

import os
import re
import subprocess
import sys

import pytest

from helpers.compose import ROOT

pytestmark = pytest.mark.slow


def bench(*args: str) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_gpu_train_levers_leave_the_loss_as_it_was():
    lines = bench("bench/gpu_train.py", "--rows", "baseline", "channels_last", "attention", "all",
                  "--profile")  # fmt: skip
    rows = [line for line in lines if re.match(r"^(baseline|\+ channels_last|attention|all)", line)]
    assert len(rows) == 5  # all: and all + gradient checkpointing
    profiles = [i for i, line in enumerate(lines) if line.startswith("profile of 1 steps")]
    assert len(profiles) == 5, lines  # one per row, the step before the timed ones
    assert any("aten::convolution" in line for line in lines[profiles[0] : profiles[1]])
    losses = {line.split()[-1] for line in rows}
    assert len(losses) == 1, rows  # same weights, data and draws: float32 on the CPU is exact
    assert re.match(r"^images/s at 32 px: best [\d.]+ \(", lines[-1])


def test_gpu_sample_gives_ddimpipelines_images_and_a_ratio():
    lines = bench("bench/gpu_sample.py", "--no-guided")
    ddim = next(line for line in lines if line.startswith("DDIMPipeline fp32"))
    assert "0.00e+00 (0.0e+00)" in ddim  # sample() in float32 gives exactly DDIMPipeline's images
    assert re.match(r"^ratio unguided difftune-best/DDIMPipeline-fp32 [\d.]+ ", lines[-1])


def test_gpu_train_peer_runs_train_py_against_diffusers_loop(tmp_path):
    lines = bench("bench/gpu_train.py", "--peer", "--variants", "model.attention=classic",
                  "model.optimizer.lr=-1", "--profile", "--logs", str(tmp_path))  # fmt: skip
    assert any(line.startswith("peer ") and "images/s" in line for line in lines)
    plain = [line for line in lines if re.match(r"^train.py hardware=cpu +[\d.]+ images/s", line)]
    variant = [line for line in lines if line.startswith("train.py hardware=cpu model.attention")]
    assert len(plain) == 1 and len(variant) == 1, lines
    row = r"^train.py hardware=cpu model.optimizer.lr=-1 +failed: exited 2:$"
    failed = [i for i, line in enumerate(lines) if re.match(row, line)]
    assert len(failed) == 1 and any(  # its reason shown, and the runs after it went on
        line.startswith("error: model.optimizer.lr=-1 must be") for line in lines[failed[0]:]
    ), lines  # fmt: skip
    assert re.search(r" process \d+ s$", variant[0])
    intervals = [line for line in lines if line.startswith("  images/s per progress interval: ")]
    assert len(intervals) == 2 and all(float(x) > 0 for x in intervals[0].split(":")[1].split())
    profiles = [line for line in lines if re.match(r"^  profile of 1 steps: \d+ ms$", line)]
    assert len(profiles) == 2, lines  # the step before the timed ones, in each train.py run
    logs = sorted(tmp_path.glob("*.log"))
    assert len(logs) == 3 and "aten::convolution" in logs[0].read_text()
    assert "error: model.optimizer.lr=-1" in logs[2].read_text()  # the failed run's log too
    ratio = re.match(r"^ratio train.py/peer images/s: [\d.]+ \(train.py ([\d.]+) images/s\)$",
                     lines[-1])  # fmt: skip
    assert ratio and ratio[1] == plain[0].split()[2]  # the ratio is the plain run's
