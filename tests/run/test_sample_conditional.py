"""`sample.py` on a class-conditional pipeline: a grid row per class from the same noises,
`class_label` by name or id, `cfg_scale`, one-line errors before any weights load, the CFG sweep."""

from pathlib import Path

import numpy as np
import pytest
from diffusers import DDPMPipeline, DDPMScheduler
from hydra import compose, initialize_config_dir
from PIL import Image

from difftune.errors import DifftuneError
from difftune.pictures.images import enlarged, montage
from difftune.run import sample_images as sample_job
from difftune.run.sweep import panel_labels
from helpers.cli import one_line, run_cli
from helpers.compose import CONF, compose_sample, shrink_sample
from helpers.images import COLOUR_LABEL, label_width
from helpers.models import conditional_tiny_base
from helpers.runs import summary_rows

NAMES = ("photo", "vintage", "cyanotype")
SIDE = 32 + 2  # the tiny base's 32 px images, 2 px gaps


@pytest.fixture(scope="module")
def conditional_dir(tmp_path_factory) -> Path:
    """The embedded tiny base with a random class embedding (so every class differs), saved with
    its own noise schedule: realistic images, not saturated noise."""
    unet, schedule = conditional_tiny_base(NAMES)
    path = tmp_path_factory.mktemp("conditional") / "pipeline"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(schedule)).save_pretrained(path)
    return path


def run(pipeline: Path, out: Path, *overrides: str, images: int = 2) -> Path:
    """`sample.py pretrained=<pipeline> <overrides>`, `images` images, 4 steps, into `out`."""
    cfg = compose_sample(f"pretrained={pipeline}", "num_inference_steps=4", *overrides,
                         output_dir=out)  # fmt: skip
    sample_job.sample_images(shrink_sample(cfg, images=images, steps=4))
    return out


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_all_classes_give_one_grid_row_each_from_the_same_noise(conditional_dir, tmp_path):
    out = run(conditional_dir, tmp_path, "guidance=color", "cfg_scale=3")
    grid = pixels(out / "grid.png")
    assert grid.shape == (2 + 3 * SIDE, 2 + 2 * SIDE, 3)  # 3 class rows of 2 images
    rows = [grid[r * SIDE : (r + 1) * SIDE + 2] for r in range(3)]
    assert all(not np.array_equal(rows[a], rows[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        f"{name}_{i:04d}.png" for name in sorted(NAMES) for i in range(2)
    ]
    # the comparison keeps the class rows and the CFG scale: its unguided grid is the plain
    # cfg_scale=3 run's, and each panel (enlarged 2x to 64 px) has 3 rows
    plain = run(conditional_dir, tmp_path / "plain", "cfg_scale=3")
    assert (out / "grid_unguided.png").read_bytes() == (plain / "grid.png").read_bytes()
    width = 2 * (2 + 2 * SIDE)  # the guided slot as wide as its caption
    assert Image.open(out / "comparison.png").size == (width + 8 + max(width, label_width(
        COLOUR_LABEL)), 28 + 2 * (2 + 3 * SIDE))  # fmt: skip


def test_classes_whose_names_give_one_file_name_keep_their_own_images(tmp_path):
    """`a b` and `a_b` both wrote images/a_b_0000.png: the second class over the first."""
    unet, schedule = conditional_tiny_base(("a b", "a_b"))
    pipeline = tmp_path / "pipeline"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(schedule)).save_pretrained(pipeline)
    out = run(pipeline, tmp_path / "out")
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "0_a_b_0000.png", "0_a_b_0001.png", "1_a_b_0000.png", "1_a_b_0001.png"
    ]  # fmt: skip


def test_a_class_by_name_or_id_is_its_row_of_the_all_classes_run(conditional_dir, tmp_path):
    common = ("scheduler=ddpm", "batch_size=1")  # DDPM's step noise too, over two batches
    every = run(conditional_dir, tmp_path / "all", *common)
    by_name = run(conditional_dir, tmp_path / "name", "class_label=vintage", *common)
    by_id = run(conditional_dir, tmp_path / "id", "class_label=1", *common)
    for i in range(2):
        image = f"images/vintage_{i:04d}.png"
        assert (by_name / image).read_bytes() == (by_id / image).read_bytes()
        assert (by_name / image).read_bytes() == (every / image).read_bytes()
    assert sorted(p.name for p in (by_name / "images").iterdir()) == [
        "vintage_0000.png", "vintage_0001.png"
    ]  # fmt: skip
    row = pixels(every / "grid.png")[SIDE : 2 * SIDE + 2]  # the second class row, gaps included
    assert np.array_equal(pixels(by_name / "grid.png"), row)
    # the progression is of the first class drawn: photo's in the all-classes run
    photo = run(conditional_dir, tmp_path / "photo", "class_label=photo", *common)
    progression = "progression.png"
    assert (every / progression).read_bytes() == (photo / progression).read_bytes()
    assert (every / progression).read_bytes() != (by_name / progression).read_bytes()


def test_cfg_scale_1_is_plain_conditional_sampling(conditional_dir, tmp_path):
    plain = run(conditional_dir, tmp_path / "plain")
    cfg_1 = run(conditional_dir, tmp_path / "cfg1", "cfg_scale=1")
    cfg_3 = run(conditional_dir, tmp_path / "cfg3", "cfg_scale=3")
    for name in NAMES:
        image = f"images/{name}_0000.png"
        assert np.abs(pixels(plain / image) - pixels(cfg_1 / image)).max() <= 1
        assert np.abs(pixels(plain / image) - pixels(cfg_3 / image)).max() > 16


VALID = "valid: photo (0), vintage (1), cyanotype (2)"
FINITE = "must be a finite number (3 is usual, 1 is plain conditional sampling) or null (no "
FINITE += "classifier-free guidance)"
UNCONDITIONAL = "pretrained=difftune/tiny_base has no classes (an unconditional pipeline); valid: "


@pytest.mark.parametrize(
    "conditional, override, message",
    [
        (False, "class_label=vintage", f"class_label=vintage: {UNCONDITIONAL}class_label=null, "
         "or a pipeline fine-tuned with model.conditioning=class"),
        (False, "cfg_scale=3", f"cfg_scale=3: {UNCONDITIONAL}cfg_scale=null, or a pipeline "
         "fine-tuned with model.conditioning=class"),
        (True, "class_label=sepia", f"class_label='sepia' is not a class of this model; {VALID}"),
        (True, "class_label=3", f"class_label=3 is not a class of this model; {VALID}"),
        (True, "cfg_scale=nan", f"cfg_scale=nan {FINITE}"),
        (True, "cfg_scale=inf", f"cfg_scale=inf {FINITE}"),
        (True, "cfg_scale=abc", f"cfg_scale=abc {FINITE}"),
        (False, "cfg_scale=abc", f"cfg_scale=abc {FINITE}"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_before_the_weights_load(
    conditional, override, message, conditional_dir, tmp_path, monkeypatch
):
    def no_weights(*args, **kwargs):
        raise AssertionError("the UNet weights were loaded before the check")

    monkeypatch.setattr(sample_job, "load_unet", no_weights)
    pipeline = conditional_dir if conditional else "difftune/tiny_base"
    with pytest.raises(DifftuneError) as err:
        run(pipeline, tmp_path, override)
    assert one_line(err) == message


def test_an_unknown_class_exits_2_in_one_line_from_the_command_line(conditional_dir, tmp_path):
    result = run_cli(
        f"pretrained={conditional_dir}", "class_label=sepia", f"hydra.run.dir={tmp_path}",
        script="sample.py",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: class_label='sepia' is not a class of this model; {VALID}"
    ]


def test_the_cfg_scale_sweep_composes_as_a_multirun():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("sample", overrides=["sweep=cfg_scale"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params["cfg_scale"] == "1,2,3,5"
    assert cfg.cfg_scale is None and cfg.class_label is None


def test_montage_labels_are_what_the_jobs_do_not_share():
    jobs = ["pretrained=/a/long/run sweep=cfg_scale cfg_scale=1",
            "pretrained=/a/long/run sweep=cfg_scale cfg_scale=5"]  # fmt: skip
    assert panel_labels(jobs) == ["cfg_scale=1", "cfg_scale=5"]
    prompts = ["guidance.prompt='a red rose' seed=0", "guidance.prompt='a blue rose' seed=0"]
    assert panel_labels(prompts) == ["guidance.prompt=a red rose", "guidance.prompt=a blue rose"]
    assert panel_labels(["seed=0", "seed=0"]) == ["seed=0", "seed=0"]  # nothing varied


def test_a_cfg_scale_sweep_leaves_a_montage_labelled_by_scale(conditional_dir, tmp_path):
    result = run_cli(
        f"pretrained={conditional_dir}", "sweep=cfg_scale", "num_images=2", "batch_size=2",
        "num_inference_steps=3", f"hydra.sweep.dir={tmp_path}", script="sample.py",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["status"] for r in summary_rows(tmp_path)] == ["completed"] * 4
    grids = [Image.open(tmp_path / str(job) / "grid.png").convert("RGB") for job in range(4)]
    assert all(grid.size == (2 + 2 * SIDE, 2 + 3 * SIDE) for grid in grids)  # a row per class
    assert len({grid.tobytes() for grid in grids}) == 4  # each scale its own pictures
    # exactly the montage of the four grids, enlarged 4x to >= 256 px, under `cfg_scale=<w>`
    panels = [
        (f"cfg_scale={w}", enlarged(grid, 4)) for w, grid in zip((1, 2, 3, 5), grids, strict=True)
    ]
    expected = montage(panels, title=f"{tmp_path.name}: 4 jobs, the same seed")
    assert Image.open(tmp_path / "montage.png").convert("RGB").tobytes() == expected.tobytes()
