"""What the callbacks leave in a run dir: sample panels, progression, curves, throughput."""

import csv
import resource

import pytest
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ThroughputMonitor, throughput_monitor
from lightning.pytorch.loggers import Logger
from omegaconf import open_dict
from PIL import Image
from torch.utils.data import DataLoader

import difftune.callbacks.throughput as throughput
from difftune.callbacks import LossCurve, StepProgressBar, Throughput
from difftune.callbacks.kid import KIDCallback
from difftune.callbacks.loss_curve import smooth
from difftune.run.train import train
from helpers.compose import compose_train, shrink
from helpers.training import batches, make_module, trainer


def run(tmp_path, tiny_pipeline_dir, *overrides, steps=4):
    model = f"model.pretrained={tiny_pipeline_dir}"
    cfg = shrink(compose_train(model, "data.image_size=16", *overrides, output_dir=tmp_path), steps)
    with open_dict(cfg):
        cfg.callbacks.sample_grid.update(every_n_steps=2, num_images=4)
        cfg.callbacks.throughput.every_n_steps = 2
        cfg.trainer.log_every_n_steps = 1
    return train(cfg)


SIDE = 4 * (2 + 2 * 18)  # a grid of 4 images of 16 px (2 px gaps), enlarged 4x to 64 px images
TOP = 28  # the title line ("step 4") and the panels' labels


def panel_count(path) -> int:
    """Panels are SIDE px wide grids separated by 8 px of white."""
    return (Image.open(path).size[0] + 8) // (SIDE + 8)


def test_unguided_run_writes_single_grids_progression_and_curve(tmp_path, tiny_pipeline_dir):
    run(tmp_path, tiny_pipeline_dir)
    names = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert names == ["step_000000.png", "step_000002.png", "step_000004.png"]
    grid = Image.open(tmp_path / "samples" / "step_000004.png").convert("RGB")
    assert grid.size == (SIDE, TOP + SIDE)
    # enlarged with nearest neighbours: each 16 px image pixel is a uniform 4x4 block
    block = grid.crop((8, TOP + 8, 12, TOP + 12))
    assert len(set(block.getdata())) == 1
    assert len(set(grid.crop((0, 0, SIDE, 13)).getdata())) > 1  # the title line has text
    progression = Image.open(tmp_path / "progression.png")
    assert progression.size[1] >= 2 * 100  # x_t | x̂0 rows for the first and the last step
    assert Image.open(tmp_path / "loss_curve.png").size == (800, 450)


def test_guided_and_ema_panels_side_by_side(tmp_path, tiny_pipeline_dir):
    run(tmp_path, tiny_pipeline_dir, "guidance=color", "ema=default")
    grid = tmp_path / "samples" / "step_000004.png"
    assert panel_count(grid) == 4  # EMA unguided, EMA guided, raw unguided, raw guided
    pixels = Image.open(grid).convert("RGB")
    left = pixels.crop((0, TOP, SIDE, TOP + SIDE))
    right = pixels.crop((SIDE + 8, TOP, 2 * SIDE + 8, TOP + SIDE))
    assert list(left.getdata()) != list(right.getdata())  # guidance changed the picture


def test_throughput_and_peak_memory_are_logged(tmp_path, tiny_pipeline_dir):
    run(tmp_path, tiny_pipeline_dir)
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["perf/images_per_s"]]
    assert len(rows) >= 2  # every 2 of the 4 optimizer steps
    assert all(float(r["perf/images_per_s"]) > 0 for r in rows)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    logged = [float(r["perf/peak_memory_mb"]) for r in rows]
    assert all(100 < mb <= peak_mb for mb in logged)  # MB, this process's peak so far
    assert logged == sorted(logged)  # a peak never goes down


def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]
    assert smooth([0.0, 10.0], weight=0.5) == [0.0, 10.0 * 0.5 / (1 - 0.25)]


class Memory(Logger):
    """A logger that keeps every metrics dict it is given."""

    name, version = "memory", 0

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append(dict(metrics))


def fit_on_a_fake_clock(monkeypatch, callback) -> tuple[list[dict], list[dict]]:
    """4 steps of 4 images on a fake clock: each training step takes 1 s, a grid after it 100 s.
    Returns what the module's `log_dict` was given, and what the logger got.
    """
    clock = [0.0]
    fake = type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])})
    for module in (throughput, throughput_monitor):
        monkeypatch.setattr(module, "time", fake)

    class OneSecondSteps(Callback):
        def on_before_backward(self, *args):
            clock[0] += 1.0

    class SlowGrid(Callback):
        def on_train_batch_end(self, *args):
            clock[0] += 100.0

    logged, logger, module = [], Memory(), make_module()
    log_dict = module.log_dict
    monkeypatch.setattr(module, "log_dict", lambda m, **kw: logged.append(m) or log_dict(m, **kw))
    data = DataLoader(batches(4, 4), batch_size=1, collate_fn=lambda items: items[0])
    fit = trainer(callbacks=[callback, OneSecondSteps(), SlowGrid()], max_steps=4, logger=logger,
                  log_every_n_steps=1)  # fmt: skip
    fit.fit(module, data)
    return logged, logger.rows


def test_images_per_s_counts_training_steps_not_the_grids(monkeypatch):
    logged, _ = fit_on_a_fake_clock(monkeypatch, Throughput(every_n_steps=2))
    assert [m["perf/images_per_s"] for m in logged] == [4.0, 4.0]  # 4 images a 1 s step


@pytest.mark.filterwarnings("ignore:When using the `ThroughputMonitor`")
def test_lightnings_throughput_monitor_counts_the_grids_so_throughput_is_ours(monkeypatch):
    """Why `Throughput` is not Lightning's `ThroughputMonitor`: its clock runs on through the
    callbacks after it, so 4 images a 1 s step with a 100 s grid after each read 4/101 a second."""
    monitor = ThroughputMonitor(batch_size_fn=lambda batch: batch["images"].shape[0], window_size=2)
    _, rows = fit_on_a_fake_clock(monkeypatch, monitor)
    key = "train/device/samples_per_sec"
    theirs = [row[key] for row in rows if key in row]
    assert len(theirs) == 3 and all(value == pytest.approx(4 / 101) for value in theirs)


def test_the_loss_curve_has_one_point_per_optimizer_step_under_accumulation(tmp_path):
    """The mean of each window's micro-batch losses, not a staircase of micro-batch values."""
    micro = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, *args):
            micro.append(float(trainer.callback_metrics["train/loss"]))

    curve = LossCurve(str(tmp_path / "loss_curve.png"), every_n_steps=100)
    data = DataLoader(batches(6, 2), batch_size=1, collate_fn=lambda items: items[0])
    fit = trainer(callbacks=[Record(), curve], max_steps=2, accumulate_grad_batches=3)
    fit.fit(make_module(lr=1e-3), data)
    assert len(micro) == 6 and len(set(micro)) == 6
    expected = [(1, sum(micro[:3]) / 3), (2, sum(micro[3:]) / 3)]
    assert [s for s, _ in curve.train] == [1, 2]
    for (_, got), (_, want) in zip(curve.train, expected, strict=True):
        assert abs(got - want) < 1e-6
    assert (tmp_path / "loss_curve.png").is_file()


def test_kid_is_drawn_beside_the_loss_curve(tmp_path):
    class FakeKID(Callback):  # what KIDCallback offers, without its sampling
        curve = KIDCallback.curve
        prefix, feature_name = "val", "small"

        def __init__(self):
            self.history = []

        def on_train_end(self, trainer, *args):  # after LossCurve's: the last point still shows
            self.history += [(0, 0.08), (trainer.global_step, 0.02)]

    path = tmp_path / "loss_curve.png"
    data = DataLoader(batches(2, 2), batch_size=1, collate_fn=lambda items: items[0])
    trainer(callbacks=[LossCurve(str(path)), FakeKID()], max_steps=2).fit(make_module(), data)
    assert Image.open(path).size == (1200, 450)  # the loss, and a panel for val/kid_small
    trainer(callbacks=[LossCurve(str(path))], max_steps=2).fit(make_module(), data)
    assert Image.open(path).size == (800, 450)


def test_the_terminal_bar_counts_optimizer_steps_not_epochs_or_micro_batches(capsys):
    """Lightning's bar showed `Epoch 9/-2` (max_epochs=-1) and `4/2` under accumulation."""
    data = DataLoader(batches(3, 2), batch_size=1, collate_fn=lambda items: items[0])
    bar = StepProgressBar()
    fit = trainer(
        callbacks=[bar], max_steps=4, max_epochs=-1, accumulate_grad_batches=2,
        enable_progress_bar=True,
    )  # fmt: skip
    fit.fit(make_module(), data)  # 8 micro-batches over 3 epochs of 3
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (4, 4)
    shown = capsys.readouterr().out
    assert "train: 100%" in shown and "4/4" in shown
    assert "Epoch" not in shown and "/-2" not in shown and "8/" not in shown
    # the loss the bar shows is the last step's (read by the bar: train/loss is not a prog_bar
    # metric, which Lightning would read on the host after every batch)
    assert f"train/loss={fit.callback_metrics['train/loss'].item():.3g}" in shown
    assert "train/loss" not in fit.progress_bar_metrics


def test_no_number_is_logged_every_step(tmp_path, tiny_pipeline_dir, monkeypatch):
    """A Python number given to `log` becomes a tensor on the module's device: on a GPU a
    host-to-device copy that waits for every queued kernel. The default callbacks log numbers at
    most every `every_n_steps` and at an epoch's end, never each step."""
    from lightning.pytorch import LightningModule
    from torch import Tensor

    numbers = {}
    log = LightningModule.log

    def recording_log(self, name, value, *args, **kwargs):
        if not isinstance(value, Tensor) and self.trainer.training:
            numbers.setdefault(name, []).append(self.trainer.global_step)
        return log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(LightningModule, "log", recording_log)
    model = f"model.pretrained={tiny_pipeline_dir}"
    cfg = shrink(compose_train(model, "data.image_size=16", output_dir=tmp_path), steps=8)
    with open_dict(cfg):
        cfg.callbacks.throughput.every_n_steps = 4
    train(cfg)
    assert "data/skipped" in numbers and "perf/images_per_s" in numbers
    for name, steps in numbers.items():
        assert len(steps) <= 3, f"{name} logged a number at steps {steps}"
    with open(tmp_path / "metrics.csv") as f:
        skipped = [r["data/skipped"] for r in csv.DictReader(f) if r.get("data/skipped")]
    assert skipped and all(float(s) == 0 for s in skipped)  # still logged, per epoch
