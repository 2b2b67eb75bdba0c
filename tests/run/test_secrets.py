"""A token given on the command line is written nowhere: every file of the run shows `***`.

The end-to-end run logs to CSV and to W&B offline, so the W&B run file is grepped as well.
"""

import os
import subprocess
import sys

import pytest

from difftune.run.redaction import redact, redact_text
from helpers.compose import ROOT

HF_TOKEN = "hf_abcdefSECRET123"
PASSWORD = "plain-words-secret"  # secret by its key only
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # secret by its look only (40 hex)


def test_secret_keys_and_token_looking_values_become_stars():
    config = {"hub": {"token": HF_TOKEN, "repo_id": "me/model"}, "a": [{"Api_Key": 3, "b": 4}],
              "note": f"key {WANDB_KEY} and {HF_TOKEN}", "lr": 1e-5}  # fmt: skip
    assert redact(config) == {"hub": {"token": "***", "repo_id": "me/model"},
                              "a": [{"Api_Key": "***", "b": 4}], "note": "key *** and ***",
                              "lr": 1e-5}  # fmt: skip
    assert redact_text(f"+hub.token={HF_TOKEN}") == "+hub.token=***"
    assert redact_text(f"logger.wandb.api_key='{PASSWORD}'") == "logger.wandb.api_key=***"
    assert redact_text(f"x=1,extra.password={PASSWORD},y=2") == "x=1,extra.password=***,y=2"
    assert redact_text(f"python train.py +note={WANDB_KEY}") == "python train.py +note=***"
    assert redact_text("model.pretrained=google/ddpm-celebahq-256") == (
        "model.pretrained=google/ddpm-celebahq-256"
    )


@pytest.mark.slow
def test_no_file_of_a_run_or_its_sweep_holds_a_secret_given_on_the_command_line(tmp_path):
    sweep_dir = tmp_path / "multirun"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "train.py", "-m", f"+hub.token={HF_TOKEN}", f"+extra.password={PASSWORD}",
         f"+extra.note={WANDB_KEY}", "logger=wandb", "logger.wandb.offline=true",
         "trainer.max_steps=2", "data.num_images=40",
         "data.val_size=8", "callbacks.sample_grid=null", "callbacks.loss_curve=null",
         "+trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}",
         f"resume_dir={tmp_path / 'resume'}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = sweep_dir / "0"
    assert (run_dir / "pipeline" / "model_index.json").is_file()
    assert list(tmp_path.rglob("offline-run-*/*.wandb"))  # the W&B run file is grepped too
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "run_info.json",
            "config_resolved.yaml", "hparams.yaml"} <= {
        str(p.relative_to(run_dir)) for p in files if run_dir in p.parents}  # fmt: skip
    for path in files:
        data = path.read_bytes()
        for secret in (HF_TOKEN, PASSWORD, WANDB_KEY):
            assert secret.encode() not in data, f"{secret} written to {path}"
    assert "+hub.token=***" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "+hub.token=***" in (run_dir / "run_info.json").read_text()
    output = result.stdout + result.stderr
    assert all(secret not in output for secret in (HF_TOKEN, PASSWORD, WANDB_KEY))
    warning = [line for line in output.splitlines() if "HF_TOKEN" in line]
    assert warning and "hub.token" in warning[0] and HF_TOKEN not in warning[0]
