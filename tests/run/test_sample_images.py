"""`sample.py` / `sample_images(cfg)`: files written, the `scheduler` config group, bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from PIL import Image

import difftune.run.sample_images as sample_images_module
from difftune.core.sampling import sample
from difftune.errors import DifftuneError
from difftune.guidance import SCHEDULES
from difftune.hub.pipelines import load_noise_scheduler
from difftune.pictures.images import save_grid
from difftune.run.sample_images import make_scheduler, sample_images, start_noise
from helpers.compose import CONF, ROOT, compose_sample
from helpers.images import COLOUR_LABEL, label_width

SCHEDULER_CLASSES = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
}


def test_sampling_a_local_pipeline_writes_grid_images_and_progression(tiny_pipeline_dir, tmp_path):
    cfg = compose_sample(
        f"pretrained={tiny_pipeline_dir}", "num_images=5", "batch_size=2", "num_inference_steps=6",
        "progression_every=2", "image_size=24", "guidance=color", output_dir=tmp_path,
    )  # fmt: skip
    grid = sample_images(cfg)
    images = sorted((tmp_path / "images").iterdir())
    assert [p.name for p in images] == [f"{i:04d}.png" for i in range(5)]
    assert Image.open(images[0]).size == (24, 24) and Image.open(images[0]).mode == "RGB"
    assert Image.open(grid).size == (2 + 3 * 26, 2 + 2 * 26)  # 5 images, ⌈√5⌉ = 3 per row
    assert Image.open(tmp_path / "progression.png").size[1] > 4 * 40  # rows at steps 0, 2, 4, 5


def test_a_guided_sample_writes_the_unguided_grid_of_the_same_noise_beside_it(
    tiny_pipeline_dir, tmp_path
):
    common = (f"pretrained={tiny_pipeline_dir}", "num_images=4", "batch_size=2",
              "num_inference_steps=4", "scheduler=ddpm")  # fmt: skip
    sample_images(compose_sample(*common, "guidance=color", output_dir=tmp_path / "guided"))
    sample_images(compose_sample(*common, output_dir=tmp_path / "plain"))
    guided, plain = tmp_path / "guided", tmp_path / "plain"
    # the same noise (DDPM's per-step noise too): exactly the unguided run's grid
    assert (guided / "grid_unguided.png").read_bytes() == (plain / "grid.png").read_bytes()
    assert (guided / "grid.png").read_bytes() != (plain / "grid.png").read_bytes()
    comparison = Image.open(guided / "comparison.png")  # two labelled panels, enlarged 4x
    side = 4 * 38  # 2x2 images of 16 px, 2 px gaps; the guided slot as wide as its caption
    assert comparison.size == (side + 8 + max(side, label_width(COLOUR_LABEL)), 28 + side)
    assert not (plain / "comparison.png").exists()


def tiles(grid: Path, count: int, side: int, per_row: int) -> list[np.ndarray]:
    """The first `count` images of a grid (2 px gaps, `per_row` a row), as pixel arrays."""
    pixels = np.asarray(Image.open(grid).convert("RGB"))
    at = [(2 + (k // per_row) * (side + 2), 2 + (k % per_row) * (side + 2)) for k in range(count)]
    return [pixels[y : y + side, x : x + side] for y, x in at]


def test_many_images_all_go_to_images_and_the_grids_show_the_first(
    tiny_pipeline_dir, tmp_path, monkeypatch
):
    """Thousands of images (an FID set) made grids of thousands, and guidance sampled them all
    again unguided only for the comparison; the grids now show the first GRID_IMAGES."""
    monkeypatch.setattr(sample_images_module, "GRID_IMAGES", 3)
    common = (f"pretrained={tiny_pipeline_dir}", "num_images=5", "batch_size=2",
              "num_inference_steps=3", "scheduler=ddpm")  # fmt: skip
    sample_images(compose_sample(*common, "guidance=color", output_dir=tmp_path / "guided"))
    sample_images(compose_sample(*common, output_dir=tmp_path / "plain"))
    guided, plain = tmp_path / "guided", tmp_path / "plain"
    names = [f"{i:04d}.png" for i in range(5)]
    assert sorted(p.name for p in (guided / "images").iterdir()) == names
    for grid, run in ((guided / "grid.png", guided), (plain / "grid.png", plain),
                      (guided / "grid_unguided.png", plain)):  # fmt: skip
        assert Image.open(grid).size == (2 + 2 * 18, 2 + 2 * 18)  # 3 images, 2 a row
        shown = tiles(grid, 3, side=16, per_row=2)
        for tile, name in zip(shown, names, strict=False):
            assert np.array_equal(tile, np.asarray(Image.open(run / "images" / name)))


@pytest.mark.parametrize("shape", [(3, 16, 16), (4, 32, 32), (1, 4, 4), (3, 18, 18), (3, 7, 9)])
def test_the_start_noise_in_batches_is_the_one_draw_of_all_the_images(shape):
    """Drawn a batch at a time (an FID set's noise no longer all in memory), the same x_T as
    one `torch.randn` of every image: the images of a seed stay what they were."""
    whole = torch.randn(7, *shape, generator=torch.Generator().manual_seed(3))
    batches = list(start_noise(3, 7, shape, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1] and torch.equal(torch.cat(batches), whole)


def test_a_crash_keeps_the_images_of_the_batches_before_it(
    tiny_pipeline_dir, tmp_path, monkeypatch
):
    """They were written only after the last batch: a crash or a stop lost all of them."""
    calls = []

    def fails_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return sample(*args, **kwargs)

    monkeypatch.setattr(sample_images_module, "sample", fails_on_the_second_batch)
    cfg = compose_sample(f"pretrained={tiny_pipeline_dir}", "num_images=4", "batch_size=2",
                         "num_inference_steps=3", output_dir=tmp_path)  # fmt: skip
    with pytest.raises(RuntimeError, match="illegal memory access"):
        sample_images(cfg)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["0000.png", "0001.png"]


def test_same_seed_same_images_and_a_run_dir_is_a_valid_source(tiny_pipeline_dir, tmp_path):
    run_dir = tmp_path / "run"  # a training run dir holds its export in pipeline/
    (run_dir / "pipeline").parent.mkdir()
    (run_dir / "pipeline").symlink_to(tiny_pipeline_dir)
    outputs = []
    for name, source in (("a", tiny_pipeline_dir), ("b", run_dir)):
        cfg = compose_sample(f"pretrained={source}", "num_images=2", "num_inference_steps=3",
                             output_dir=tmp_path / name)  # fmt: skip
        sample_images(cfg)
        outputs.append((tmp_path / name / "grid.png").read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml")))
def test_every_scheduler_option_builds_from_the_pipelines_noise_schedule(option, tmp_path):
    cfg = compose_sample(f"scheduler={option}", "num_inference_steps=7", output_dir=tmp_path)
    scheduler = make_scheduler(cfg)  # the embedded base: squaredcos_cap_v2, v_prediction
    trained = load_noise_scheduler(cfg.pretrained)
    assert type(scheduler) is SCHEDULER_CLASSES[option] and len(scheduler.timesteps) == 7
    assert scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(scheduler.alphas_cumprod, trained.alphas_cumprod)


def test_an_unknown_scheduler_is_one_line_naming_the_options(tmp_path):
    result = subprocess.run(
        [sys.executable, "sample.py", "scheduler=euler", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == ["error: scheduler=euler: no such option; valid: ddim, ddpm, dpm_solver"]


def test_plot_schedules_draws_each_weight_over_the_pipelines_timesteps(
    tiny_pipeline_dir, tmp_path, monkeypatch
):
    import matplotlib.axes

    drawn, plot = {}, matplotlib.axes.Axes.plot

    def recording(ax, y, *args, label=None, **kwargs):
        drawn[label] = np.asarray(y)
        return plot(ax, y, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording)
    cfg = compose_sample(f"pretrained={tiny_pipeline_dir}", "plot=schedules", output_dir=tmp_path)
    path = sample_images(cfg)
    assert path.name == "schedules.png" and Image.open(path).size == (800, 450)
    alphas_cumprod = DDPMScheduler.from_pretrained(tiny_pipeline_dir, subfolder="scheduler")
    alphas_cumprod = alphas_cumprod.alphas_cumprod.float()
    assert drawn.keys() == SCHEDULES.keys()
    for name, weight in SCHEDULES.items():
        np.testing.assert_allclose(drawn[name], weight(alphas_cumprod).numpy(), rtol=1e-6)


def test_embedded_default_samples_offline(tmp_path):
    sample_images(compose_sample("num_images=4", "num_inference_steps=10", output_dir=tmp_path))
    grid = torch.tensor(list(Image.open(tmp_path / "grid.png").convert("L").getdata()), dtype=float)
    assert grid.std() > 20  # real pictures, not a flat or blank grid


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_inference_steps=0", "num_inference_steps=0 must be an integer >= 1"),
        ("num_images=0", "num_images=0 must be an integer >= 1"),
        ("plot=curves", "plot='curves' is not one of schedules"),
        ("image_size=25", "image_size=25 cannot go through this UNet: use a multiple of 2"),
    ],
)
def test_bad_input(override, message, tiny_pipeline_dir, tmp_path):
    with pytest.raises(DifftuneError, match=message):
        sample_images(
            compose_sample(f"pretrained={tiny_pipeline_dir}", override, output_dir=tmp_path)
        )


def test_empty_prompt_is_one_line_from_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "sample.py", "guidance=clip", "guidance.prompt=''",
         "guidance.pretrained=null", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: guidance.prompt='': expected non-empty text(s)"
    ]


def test_save_grid_writes_model_space_as_pixels(tmp_path):
    x = torch.stack([torch.full((3, 4, 4), -1.0), torch.full((3, 4, 4), 1.0)])
    pixels = Image.open(save_grid(x, tmp_path / "g.png", nrow=2)).convert("L")
    assert pixels.getpixel((3, 3)) == 0 and pixels.getpixel((9, 3)) == 255


def test_batch_size_only_splits_the_work_the_images_stay_the_same(tmp_path):
    """DDPM's step noise per image and the guidance's share per batch: a guided DDPM run in
    batches of 1 or of 3 + 1 draws the images of one batch of 4 (the embedded base: clip_sample,
    v-prediction). Before, each batch of b pulled its images with scale/b and drew its step
    noise from one generator in turn."""

    def images(batch_size: int, *extra: str) -> np.ndarray:
        out = tmp_path / f"batch{batch_size}{'_guided' if extra else ''}"
        sample_images(compose_sample("num_images=4", f"batch_size={batch_size}", "scheduler=ddpm",
                                     "num_inference_steps=6", *extra, output_dir=out))  # fmt: skip
        return np.stack([np.asarray(Image.open(out / "images" / f"{i:04d}.png"), dtype=np.int16)
                         for i in range(4)])  # fmt: skip

    guided = ("guidance=color", "guidance.scale=400")  # a pull of 100 per image in 4
    whole = images(4, *guided)
    for split in (1, 3):
        assert np.abs(images(split, *guided) - whole).max() <= 1  # PNG rounding
    assert np.abs(images(4) - whole).mean() > 10  # the guidance moved them: not a vacuous test


def test_a_per_image_scale_is_the_articles_scale_times_num_images_in_any_batches(tmp_path):
    """guidance.per_image=true: each image pulled as if alone; scale 100 per image is the
    article's batch-mean scale 400 over 4 images, in one batch of 4 or in batches of 3 + 1."""

    def images(*overrides: str) -> np.ndarray:
        out = tmp_path / "_".join(overrides).replace("=", "-")
        sample_images(compose_sample("num_images=4", "scheduler=ddpm", "num_inference_steps=6",
                                     "guidance=color", *overrides, output_dir=out))  # fmt: skip
        return np.stack([np.asarray(Image.open(out / "images" / f"{i:04d}.png"), dtype=np.int16)
                         for i in range(4)])  # fmt: skip

    article = images("guidance.scale=400", "batch_size=4")
    for batch_size in (4, 3):
        per_image = images(
            "guidance.scale=100", "guidance.per_image=true", f"batch_size={batch_size}"
        )
        assert np.abs(per_image - article).max() <= 1  # PNG rounding
    assert np.abs(images("guidance.scale=100", "batch_size=4") - article).mean() > 3  # not vacuous
