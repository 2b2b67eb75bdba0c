"""The page's starting values (`page.*` in conf/demo.yaml): set from the command line, on the
page's controls, and checked in one line each (key, value, what is valid) before Gradio loads."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from difftune.demo.checks import check_demo_config
from difftune.errors import DifftuneError
from difftune.run.preflight import check_command_line
from helpers.browser import free_port
from helpers.cli import one_line_exit_2
from helpers.compose import CONF


def compose_demo(*overrides: str, output_dir) -> DictConfig:
    """The real demo config as `python demo.py <overrides>` composes it, writing to `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("demo", overrides=[f"paths.output_dir={output_dir}", *overrides])


def test_the_scheduler_and_the_guidance_are_set_from_the_command_line_and_start_the_page(tmp_path):
    overrides = ["page.scheduler=ddpm", "page.guidance=none", "page.num_images=8",
                 'page.colour="#00ff00"', "page.seed=4294967295",
                 f"port={free_port()}"]  # fmt: skip
    check_command_line(CONF, "demo", overrides)  # was: "no such key" for scheduler= / guidance=
    cfg = compose_demo(*overrides, output_dir=tmp_path)
    check_demo_config(cfg)
    from difftune.demo.app import build_demo  # Gradio: only once the checks passed

    page = build_demo(cfg, CONF)
    start = {block.elem_id: block.value for block in page.blocks.values() if block.elem_id}
    assert (start["scheduler"], start["guidance"], start["colour"]) == ("ddpm", "none", "#00ff00")
    assert (start["num_images"], start["seed"], start["steps"]) == (8, 4294967295, 20)
    assert (start["schedule"], start["scale"], start["through_unet"]) == ("none", "40", False)
    assert start["prompt"] == "Red Rose, red flower painting"


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["port=99999"], "port=99999 must be an integer in 1..65535"),
        (["port=0"], "port=0 must be an integer in 1..65535"),
        (["page.num_images=0"], "page.num_images=0 must be an integer in 1..16 (max_images=16)"),
        (["page.num_images=17"], "page.num_images=17 must be an integer in 1..16 (max_images=16)"),
        (["max_images=4", "page.num_images=5"],
         "page.num_images=5 must be an integer in 1..4 (max_images=4)"),
        (["page.num_images=2.5"],
         "page.num_images=2.5 must be an integer in 1..16 (max_images=16)"),
        (["page.num_inference_steps=201"],
         "page.num_inference_steps=201 must be an integer in 1..200 (max_steps=200)"),
        (["page.scheduler=euler"], "page.scheduler=euler is not one of ddim, ddpm, dpm_solver"),
        (["page.guidance=colour"], "page.guidance=colour is not one of none, color, clip"),
        (["page.schedule=linear"], "page.schedule=linear is not one of none, alpha_bar, "
         "sqrt_alpha_bar, sqrt_one_minus_alpha_bar"),
        (["page.seed=-1"], "page.seed=-1 must be an integer in 0..4294967295"),
        (["page.scale=abc"], "page.scale=abc must be a finite number (e.g. 40)"),
        (["page.scale=nan"], "page.scale=nan must be a finite number (e.g. 40)"),
        (["page.colour=red"], "page.colour=red must be a hex colour #rrggbb, quoted for Hydra and "
         """the shell: 'page.colour="#cc6699"'"""),
        (["page.through_unet=yes"], "page.through_unet=yes must be true or false"),
        (["page.prompt=[a,b]"], "page.prompt=['a', 'b'] must be text, not a list or a map"),
    ],
)  # fmt: skip
def test_a_bad_starting_value_is_one_line_before_the_page_starts(overrides, line, tmp_path, capsys):
    cfg = compose_demo(*overrides, output_dir=tmp_path)
    assert one_line_exit_2(check_demo_config, cfg, capsys) == f"error: {line}"


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_demo("device=cuda", output_dir=tmp_path)
    assert one_line_exit_2(check_demo_config, cfg, capsys) == (
        "error: device=cuda but no CUDA GPU is visible; use device=cpu (or device=auto)"
    )


def test_the_starting_values_are_checked_before_the_pipeline_loads(tmp_path, capsys):
    cfg = compose_demo("pretrained=/no/such/pipeline", "page.num_images=0", output_dir=tmp_path)
    assert one_line_exit_2(check_demo_config, cfg, capsys) == (
        "error: page.num_images=0 must be an integer in 1..16 (max_images=16)"
    )


@pytest.mark.parametrize("old", ["scheduler=ddpm", "guidance=none", "num_images=4", "seed=3"])
def test_an_old_starting_value_key_names_its_page_key(old):
    with pytest.raises(DifftuneError) as err:
        check_command_line(CONF, "demo", [old])
    assert str(err.value) == f"{old}: this key moved; use page.{old}"
