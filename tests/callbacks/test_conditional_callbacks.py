"""Training callbacks on a class-conditional module: a grid row per class (with and without
CFG), KID per class; the references are `sample()` and torchmetrics' KID computed here."""

import logging
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from lightning.pytorch import LightningDataModule
from PIL import Image, ImageChops
from torch.utils.data import DataLoader

from difftune.callbacks import SampleGrid
from difftune.callbacks.grid_budget import plan_grids
from difftune.callbacks.kid import KIDCallback
from difftune.core.module import DiffusionFineTuner
from difftune.errors import DifftuneError
from difftune.guidance import ColorLoss, Guidance
from difftune.metrics.distance import distribution_distance
from difftune.metrics.features import SmallFeatures
from difftune.pictures.images import save_panels, to_unit
from difftune.sampling import sample
from helpers.models import make_conditional_unet
from helpers.training import sgd, trainer

NAMES = ("photo", "vintage", "cyanotype")
STEPS = 3  # DDIM steps of every sample here
SIDE = 16  # px; save_panels enlarges them 4x, make_grid puts 2 px between them
TOP = 28  # the title line and the panels' labels


class LabelledData(LightningDataModule):
    """Random 16 px images with labels, in batches shaped as ImageDataModule's."""

    image_size, batch_size = SIDE, 4

    def __init__(self, val_labels: Sequence[int] | None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        train_labels = torch.tensor([0, 1, 2, 0])
        self.train = [self.batch(torch.rand(4, 3, SIDE, SIDE, generator=g), train_labels)]
        n = len(val_labels or [0, 0])
        images = torch.rand(n, 3, SIDE, SIDE, generator=g)
        labels = None if val_labels is None else torch.tensor(val_labels)
        self.val = [
            self.batch(images[i : i + 4], None if labels is None else labels[i : i + 4])
            for i in range(0, n, 4)
        ]

    @staticmethod
    def batch(images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        out = {"images": images * 2 - 1, "skipped": [], "skipped_files": []}
        return out if labels is None else out | {"labels": labels}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train * 4, batch_size=1, collate_fn=lambda items: items[0])

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=1, collate_fn=lambda items: items[0])


def conditional_module() -> DiffusionFineTuner:
    """The tiny UNet with random class rows (each class draws differently), kept as it is."""
    unet = make_conditional_unet(NAMES)
    return DiffusionFineTuner(unet, DDPMScheduler(num_train_timesteps=1000), optimizer=sgd(1e-3),
                              conditioning="class", class_names=NAMES)  # fmt: skip


def fit(callback, val_labels: Sequence[int] | None = (0, 0)) -> DiffusionFineTuner:
    module = conditional_module()
    fit_trainer = trainer(callbacks=[callback], limit_val_batches=0)
    fit_trainer.fit(module, datamodule=LabelledData(val_labels))
    return module.eval()


def reference(module, noise, labels, guidance=None, cfg_scale=None) -> torch.Tensor:
    scheduler = DDIMScheduler.from_config(module.noise_scheduler.config)
    return sample(module.unet, scheduler, noise, STEPS, guidance, class_labels=labels,
                  cfg_scale=cfg_scale)  # fmt: skip


COLOR = Guidance(ColorLoss((0.8, 0.4, 0.6)), 20)


@pytest.mark.parametrize(
    ("cfg_scale", "guidance", "labels"),
    [
        (3.0, None, ["no CFG", "CFG 3"]),
        (None, None, ["no CFG"]),
        (2.5, COLOR, ["no CFG", "CFG 2.5", f"CFG 2.5, {COLOR.label}"]),
    ],
)
def test_the_grid_has_a_row_per_class_from_the_same_noise(tmp_path, cfg_scale, guidance, labels):
    grid = SampleGrid(str(tmp_path / "samples"), every_n_steps=100, num_images=7,
                      num_inference_steps=STEPS, seed=5, guidance=guidance,
                      progression_path=str(tmp_path / "progression.png"), max_cost_ratio=None,
                      cfg_scale=cfg_scale)  # fmt: skip
    module = fit(grid)
    written = Image.open(tmp_path / "samples" / "step_000001.png").convert("RGB")

    columns = 7 // len(NAMES)  # 2 images a row, the same 2 noises in every row
    noise = torch.randn((columns, 3, SIDE, SIDE), generator=torch.Generator().manual_seed(5))
    rows = torch.arange(len(NAMES)).repeat_interleave(columns)
    kinds = [(None, None), (None, cfg_scale), (guidance, cfg_scale)][: len(labels)]
    panels = [
        (label, reference(module, noise.repeat(len(NAMES), 1, 1, 1), rows, g, w))
        for label, (g, w) in zip(labels, kinds, strict=True)
    ]
    title = "step 1, a row per class: photo, vintage, cyanotype"
    expected = Image.open(save_panels(panels, tmp_path / "ref.png", title, nrow=columns))
    assert written.size == expected.size
    assert written.size[1] == TOP + 4 * (len(NAMES) * (SIDE + 2) + 2)  # 3 rows of 16 px images
    assert ImageChops.difference(written, expected.convert("RGB")).getbbox() is None

    side = 4 * (SIDE + 2)  # a row of the first panel
    row = [written.crop((0, TOP + 8 + r * side, 4 * 2 * (SIDE + 2), TOP + 8 + (r + 1) * side))
           for r in range(len(NAMES))]  # fmt: skip
    assert len({r.tobytes() for r in row}) == len(NAMES)  # each class draws its own row
    if cfg_scale is not None:
        assert not torch.equal(panels[0][1], panels[1][1])  # CFG changed the samples
    assert (tmp_path / "progression.png").is_file()


def test_the_grid_budget_counts_a_cfg_panel_twice(caplog):
    grid = SampleGrid("unused", every_n_steps=10, num_images=7, num_inference_steps=40,
                      max_cost_ratio=0.5, cfg_scale=3.0)  # fmt: skip
    fake_trainer = SimpleNamespace(
        lightning_module=conditional_module(), estimated_stepping_batches=20, global_step=0,
        datamodule=SimpleNamespace(batch_size=4), accumulate_grad_batches=1, callbacks=[],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="difftune.callbacks.sample_grid"):
        grid.fit_to_budget(fake_trainer)
    # 6 images (2 a row), 4 grids, "no CFG" (1) + "CFG 3" (2: conditional and null labels)
    plan = plan_grids(6, 40, num_grids=4, panels=3, train_images=80, max_ratio=0.5)
    unweighted = plan_grids(6, 40, num_grids=4, panels=2, train_images=80, max_ratio=0.5)
    assert f"sample grids of 6 images × 40 steps would take {plan.ratio:.1f}x" in caplog.text
    assert f"{unweighted.ratio:.1f}x" not in caplog.text
    assert (grid.num_images, grid.num_inference_steps) == (plan.num_images, 10) == (4, 10)
    assert "using 3 images × 10 steps" in caplog.text  # 4 asked: one a row, as drawn


def test_kid_per_class_equals_torchmetrics_on_that_class(caplog):
    features = SmallFeatures()
    kid = KIDCallback(every_n_steps=100, num_samples=7, features=features,
                      num_inference_steps=STEPS, batch_size=8, seed=3, cfg_scale=2.0)  # fmt: skip
    val_labels = [0, 1, 0, 1, 0, 1, 2]  # cyanotype: one held-out image, no per-class KID
    with caplog.at_level(logging.WARNING, logger="difftune.callbacks.kid"):
        module = fit(kid, val_labels)
    skipped = [r.getMessage() for r in caplog.records if "per-class" in r.getMessage()]
    assert len(skipped) == 1 and "cyanotype (1)" in skipped[0]

    per_class = 7 // len(NAMES)  # 2 samples a class, each from its own noise
    noise = torch.randn((per_class * 3, 3, SIDE, SIDE), generator=torch.Generator().manual_seed(3))
    labels = torch.arange(len(NAMES)).repeat_interleave(per_class)
    fake = to_unit(reference(module, noise, labels, cfg_scale=2.0)).float()
    data = LabelledData(val_labels)
    real = to_unit(torch.cat([b["images"] for b in data.val])).float()
    real_labels = torch.cat([b["labels"] for b in data.val])

    metrics = {k: float(v) for k, v in module.trainer.callback_metrics.items() if "kid" in k}
    overall = distribution_distance(real, fake, features, seed=3)
    assert metrics["val/kid_small"] == pytest.approx(overall["kid_small"], rel=1e-5, abs=1e-7)
    for c, name in enumerate(NAMES[:2]):
        alone = distribution_distance(real[real_labels == c], fake[labels == c], features, seed=3)
        assert metrics[f"val/kid_small/{name}"] == pytest.approx(alone["kid_small"], rel=1e-5,
                                                                abs=1e-7)  # fmt: skip
        assert f"val/kid_small_std/{name}" in metrics
    assert "val/kid_small/cyanotype" not in metrics
    assert metrics["val/kid_small/photo"] != metrics["val/kid_small/vintage"]


def test_the_step_0_kid_cache_knows_the_classes_and_the_cfg_scale(tmp_path):
    def job(cfg_scale):
        kid = KIDCallback(every_n_steps=100, num_samples=4, features=SmallFeatures(),
                          num_inference_steps=1, cfg_scale=cfg_scale,
                          cache_dir=str(tmp_path))  # fmt: skip
        fit(kid, [0, 1, 0, 1])
        return kid.history[0][1]

    first = job(2.0)
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert job(2.0) == first  # read back
    job(None)
    assert len(list(tmp_path.glob("*.json"))) == 2  # another CFG scale: another measurement


def test_kid_on_a_conditional_model_needs_labelled_held_out_images():
    kid = KIDCallback(every_n_steps=100, num_samples=4, features=SmallFeatures(),
                      num_inference_steps=1)  # fmt: skip
    message = r"^callbacks.kid: the model is class-conditional but the held-out batches have no"
    with pytest.raises(DifftuneError, match=message):
        fit(kid, None)


@pytest.mark.parametrize("callback", [SampleGrid, KIDCallback])
def test_a_cfg_scale_that_is_not_a_number_is_one_line(callback):
    key = "callbacks.sample_grid" if callback is SampleGrid else "callbacks.kid"
    args = ("unused",) if callback is SampleGrid else ()
    with pytest.raises(DifftuneError, match=rf"^{key}.cfg_scale=nan: expected a finite number"):
        callback(*args, cfg_scale=float("nan"))
