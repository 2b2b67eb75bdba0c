"""Loggers start offline, fail early with one line when they cannot, and never log secrets."""

from types import SimpleNamespace

import pytest
import yaml
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from difftune.errors import DifftuneError
from difftune.run.loggers import finished_runs
from difftune.run.redaction import redact
from difftune.run.train import train
from helpers.compose import compose_train, shrink
from helpers.faults import read_only


def test_tensorboard_logger_writes_events(tmp_path, tiny_pipeline_dir):
    cfg = compose_train(f"model.pretrained={tiny_pipeline_dir}", "data.image_size=16",
                        "logger=tensorboard", output_dir=tmp_path)  # fmt: skip
    train(shrink(cfg, steps=2))
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    assert (tmp_path / "metrics.csv").is_file()  # csv comes along
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0})
    accumulator.Reload()
    images = accumulator.Images("samples")  # the sample grids, not only the scalars
    assert [i.step for i in images] == [0, 2]
    grid = Image.open(tmp_path / "samples" / "step_000002.png")
    assert (images[-1].width, images[-1].height) == grid.size


def test_wandb_offline_run_is_written_locally(tmp_path, tiny_pipeline_dir, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    model = f"model.pretrained={tiny_pipeline_dir}"
    cfg = compose_train(model, "data.image_size=16", "logger=wandb", "logger.wandb.offline=true",
                        output_dir=tmp_path)  # fmt: skip
    train(shrink(cfg, steps=2))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_each_train_call_in_one_process_gets_its_own_wandb_run(tmp_path, monkeypatch):
    """A notebook's second `train(cfg)`, or a `-m` sweep's next job (Hydra's basic launcher runs
    the jobs in one process), must not log into the first run, which Lightning leaves open."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name in ("first", "second"):
        monkeypatch.setenv("WANDB_DIR", str(tmp_path / name))
        cfg = compose_train("logger=wandb", "logger.wandb.offline=true", output_dir=tmp_path / name)
        train(shrink(cfg, steps=2))
        runs = list((tmp_path / name / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("*.wandb")), name


def test_a_fit_that_raised_ends_its_wandb_run_as_failed(tmp_path):
    ended = []

    class Run:
        def finish(self, exit_code: int) -> None:
            ended.append(exit_code)

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    logger._experiment = Run()  # as after the fit started it
    trainer = SimpleNamespace(loggers=[logger])
    with pytest.raises(RuntimeError, match="^out of memory$"), finished_runs(trainer):
        raise RuntimeError("out of memory")
    with finished_runs(trainer):
        pass
    assert ended == [1, 0]


def test_wandb_online_without_login_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    cfg = compose_train("logger=wandb", output_dir=tmp_path)
    with pytest.raises(DifftuneError, match="no W&B login was found.*logger=csv"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("where", ["read-only", "under a file"])
def test_unwritable_log_dir_fails_before_training(tmp_path, monkeypatch, where):
    target = tmp_path / "logs" / "run"
    if where == "under a file":
        (tmp_path / "logs").write_text("")
    cfg = compose_train(f"logger.csv.save_dir={target}", output_dir=tmp_path / "out")
    if where == "read-only":
        (tmp_path / "logs").mkdir()
        read_only(monkeypatch, tmp_path / "logs")  # as root too, unlike chmod
    message = {"read-only": "cannot write there", "under a file": "is a file, not a directory"}
    with pytest.raises(DifftuneError, match=f"^logger.csv.save_dir={target}: .*{message[where]}"):
        train(cfg)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_config_logged_without_secrets(tmp_path, tiny_pipeline_dir):
    model = f"model.pretrained={tiny_pipeline_dir}"
    cfg = compose_train(model, "data.image_size=16", "+hub.token=hf_SECRET123",
                        "+wandb_api_key=abc", output_dir=tmp_path)  # fmt: skip
    train(shrink(cfg, steps=1))
    logged = (tmp_path / "hparams.yaml").read_text()
    assert "hf_SECRET123" not in logged
    assert yaml.safe_load(logged)["wandb_api_key"] == "***"
    assert "pretrained" in logged and "optimizer" in logged  # the rest of the config is there
    assert redact({"a": {"HF_TOKEN": 1, "b": [{"api_key": 2, "c": 3}]}}) == {
        "a": {"HF_TOKEN": "***", "b": [{"api_key": "***", "c": 3}]}
    }


def test_a_run_resumed_in_its_dir_keeps_its_metrics_and_draws_one_curve(tmp_path):
    """Lightning's CSV logger deletes an existing metrics.csv; a resumed run must append to it
    (dropping rows logged after the checkpoint it resumes from) and draw the whole curve."""
    import csv

    from omegaconf import open_dict

    from difftune.callbacks import LossCurve

    def run(steps, *overrides):
        cfg = shrink(compose_train(*overrides, output_dir=tmp_path), steps=steps)
        with open_dict(cfg):
            cfg.trainer.log_every_n_steps = 1
            cfg.callbacks.model_checkpoint.every_n_train_steps = 2
        return cfg

    train(run(3))  # checkpoint at step 2, then one more logged step (3) and last.ckpt at 3
    step2 = tmp_path / "checkpoints" / "step_000002.ckpt"
    cfg = run(5, f"ckpt_path={step2}")
    curves = []
    original = LossCurve.on_fit_end

    def keep(self, trainer, pl_module):
        original(self, trainer, pl_module)
        curves.append(list(self.train))

    LossCurve.on_fit_end = keep
    try:
        train(cfg)
    finally:
        LossCurve.on_fit_end = original
    with open(tmp_path / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3, 4]  # the first run's 0, 1; the resumed 2, 3, 4 once each
    assert [s for s, _ in curves[0]] == [1, 2, 3, 4, 5]  # one curve: the first run's steps 1, 2
