"""The page's request: checked in one line, composed as `sample.py`'s config, streamed, zipped,
and the command it shows reproduces its images."""

import shlex
import zipfile

import pytest
from PIL import Image

from difftune.demo.job import compose_sample, run_job
from difftune.demo.request import PageRequest, command, parse_colour
from difftune.errors import DifftuneError
from helpers.cli import run_cli
from helpers.compose import CONF

LIMITS = dict(clip_pretrained="openai", max_images=16, max_steps=200)


def overrides(**fields) -> list[str]:
    return PageRequest(**{"pretrained": "difftune/tiny_base", **fields}).overrides(**LIMITS)


@pytest.mark.parametrize(
    "value, rgb",
    [("#00ff00", (0.0, 1.0, 0.0)), ("#CC6699", (0.8, 0.4, 0.6)), ("rgb(0, 0, 255)", (0, 0, 1))],
)
def test_colours_as_pickers_give_them(value, rgb):
    assert parse_colour(value) == pytest.approx(rgb, abs=1e-4)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(scale="abc"), r"^guidance scale='abc': expected a number \(e.g. 40\)$"),
        (dict(scale="nan"), r"^guidance scale='nan': expected a number"),
        (dict(colour="green"), r"^colour='green': expected a colour like #cc6699$"),
        (dict(steps=0), r"^steps=0: expected a whole number from 1 to 200$"),
        (dict(num_images=17), r"^number of images=17: expected a whole number from 1 to 16$"),
        (dict(cfg_scale="x"), r"^CFG scale='x': expected a number or empty \(e.g. 3\)$"),
        (dict(guidance="clip", prompt=" "), r"^prompt='': CLIP guidance needs a text prompt$"),
        (dict(pretrained=""), r"^pipeline='': give a hub id, a local pipeline dir or a run dir$"),
    ],
)
def test_bad_input_is_one_line(fields, message):
    with pytest.raises(DifftuneError, match=message):
        overrides(**fields)


def test_clip_with_random_weights_is_refused_in_one_line():
    request = PageRequest(pretrained="difftune/tiny_base", guidance="clip", prompt="a red rose")
    with pytest.raises(DifftuneError, match=r"^CLIP guidance: this demo was started with "
                       r"clip_pretrained=null, so CLIP has random weights"):  # fmt: skip
        request.overrides(clip_pretrained=None, max_images=16, max_steps=200)


def test_odd_prompts_and_paths_survive_hydra_and_the_shell(tmp_path):
    odd = tmp_path / "my pipelines" / "v2"
    prompt = 'a "red" rose, 50% painted; it\'s fine'
    found = overrides(pretrained=str(odd), guidance="clip", prompt=prompt, class_label="vintage")
    cfg = compose_sample(CONF, found)
    assert (cfg.pretrained, cfg.guidance.prompt, cfg.class_label) == (str(odd), prompt, "vintage")
    assert shlex.split(command(found))[2:] == found  # the shell gives sample.py the same words
    assert compose_sample(CONF, overrides(class_label="1")).class_label == 1  # an id stays an id


def test_the_job_streams_steps_zips_the_pngs_and_its_command_reproduces_them(tmp_path):
    found = overrides(colour="#00ff00", steps=6, num_images=2, scheduler="ddpm")
    cfg = compose_sample(CONF, [*found, f"paths.output_dir={tmp_path / 'page'}"])
    updates = list(run_job(cfg, command(found), every=2))
    streamed = [u for u in updates if u.progression is not None]
    assert [u.step for u in streamed] == [1, 3, 5, 6]  # every 2 steps and the last
    assert streamed[0].progression.size == (2 + 2 * 34, 2 + 2 * 34)  # x_t above x̂0, 2 of 32 px
    final = updates[-1]
    assert final.error is None and final.grid.name == "grid.png" and final.unguided.exists()
    with zipfile.ZipFile(final.archive) as zf:
        names = set(zf.namelist())
        assert {"grid.png", "grid_unguided.png", "images/0000.png", "command.txt"} <= names
        assert zf.read("command.txt").decode() == command(found) + "\n"
    result = run_cli(*shlex.split(command(found))[2:], f"hydra.run.dir={tmp_path / 'cli'}",
                     script="sample.py")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("0000.png", "0001.png"):
        page = Image.open(tmp_path / "page" / "images" / name)
        cli = Image.open(tmp_path / "cli" / "images" / name)
        assert page.tobytes() == cli.tobytes()


def test_a_job_that_fails_reports_one_line_and_nothing_else(tmp_path):
    found = overrides(pretrained=str(tmp_path / "nothing"))
    cfg = compose_sample(CONF, [*found, f"paths.output_dir={tmp_path / 'out'}"])
    (update,) = list(run_job(cfg, command(found), every=2))
    assert update.error.startswith(f"pretrained='{tmp_path / 'nothing'}': no such directory")
    assert "\n" not in update.error and update.grid is None


def test_a_conditional_pipeline_samples_a_class_with_cfg_from_the_page(tmp_path):
    """The page's class label and CFG scale reach sample.py: a row of images for that class."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from helpers.models import conditional_tiny_base

    unet, schedule = conditional_tiny_base(("photo", "vintage"))
    pipeline = tmp_path / "conditional"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(schedule)).save_pretrained(pipeline)
    found = overrides(pretrained=str(pipeline), guidance="none", class_label="vintage",
                      cfg_scale="3", steps=4, num_images=2)  # fmt: skip
    assert found[-2:] == ["class_label=vintage", "cfg_scale=3"]
    cfg = compose_sample(CONF, [*found, f"paths.output_dir={tmp_path / 'out'}"])
    final = list(run_job(cfg, command(found), every=2))[-1]
    assert final.error is None and final.unguided is None  # no loss guidance: one grid
    images = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert images == ["vintage_0000.png", "vintage_0001.png"]
    plain = overrides(pretrained=str(pipeline), guidance="none", class_label="vintage",
                      cfg_scale="1", steps=4, num_images=2)  # fmt: skip
    cfg = compose_sample(CONF, [*plain, f"paths.output_dir={tmp_path / 'plain'}"])
    assert list(run_job(cfg, command(plain), every=2))[-1].error is None
    for name in images:  # the scale reached the sampler: CFG 3 is not the conditional model
        guided = Image.open(tmp_path / "out" / "images" / name).tobytes()
        assert guided != Image.open(tmp_path / "plain" / "images" / name).tobytes()
    wrong = overrides(pretrained=str(pipeline), guidance="none", class_label="sepia")
    cfg = compose_sample(CONF, [*wrong, f"paths.output_dir={tmp_path / 'wrong'}"])
    (update,) = list(run_job(cfg, command(wrong), every=2))
    assert (
        update.error
        == "class_label='sepia' is not a class of this model; valid: photo (0), vintage (1)"
    )
