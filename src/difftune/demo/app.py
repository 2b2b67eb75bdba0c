"""The Gradio page: controls, a streamed x_t / x̂0 picture, the guided and unguided grids."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from omegaconf import DictConfig
from PIL import Image

from difftune.demo.job import compose_sample, run_job
from difftune.demo.request import GUIDANCES, SCHEDULERS, SCHEDULES, PageRequest, command
from difftune.errors import DifftuneError
from difftune.pictures.images import enlarged
from difftune.pictures.plots import pyplot

TITLE = "difftune: guided sampling"
DISPLAY_WIDTH = 320  # pixels the page shows a grid at, at least
CONTROLS = ("pretrained", "guidance", "colour", "prompt", "scale", "through_unet", "schedule",
            "scheduler", "steps", "num_images", "seed", "class_label", "cfg_scale")  # fmt: skip


def shown_large(picture: Image.Image, width: int = DISPLAY_WIDTH) -> Image.Image:
    """A small grid enlarged by a whole factor (nearest pixel) to about `width`, for the page."""
    return enlarged(picture, max(1, width // picture.width))


def build_demo(cfg: DictConfig, config_dir: Path) -> gr.Blocks:
    """The page for `cfg` (conf/demo.yaml); `config_dir` holds `sample.yaml`."""
    runs = itertools.count()
    start = cfg.page  # the controls' starting values (`check_demo_config` checked them)
    prompt = "" if start.prompt is None else str(start.prompt)  # page.prompt=1984 is text too
    out_root = Path(cfg.paths.output_dir) / "samples"

    def sample(*values: Any) -> Iterator[tuple[Any, ...]]:
        """The page's request, sampled; yields (progress, status, guided, unguided, zip, cmd)."""
        request = PageRequest(**dict(zip(CONTROLS, values, strict=True)))
        try:
            overrides = request.overrides(cfg.clip_pretrained, cfg.max_images, cfg.max_steps)
            out_dir = out_root / f"{next(runs):04d}"
            job_cfg = compose_sample(config_dir, [*overrides, f"paths.output_dir={out_dir}",
                                                  f"device={cfg.device}"])  # fmt: skip
        except DifftuneError as error:
            yield None, f"**error:** {error}", None, None, None, ""
            return
        shown = command(overrides)
        for update in run_job(job_cfg, shown, cfg.stream_every):
            if update.error:
                yield None, f"**error:** {update.error}", None, None, None, shown
            elif update.grid is None:
                status = f"sampling: step {update.step} of {update.steps}"
                yield shown_large(update.progression), status, None, None, None, shown
            else:
                status = f"done: {update.steps} steps, images in {update.grid.parent}"
                guided = shown_large(Image.open(update.grid))
                unguided = shown_large(Image.open(update.unguided)) if update.unguided else None
                yield gr.skip(), status, guided, unguided, str(update.archive), shown

    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(f"# {TITLE}\nA loss on the predicted x̂0 steers every denoising step.")
        with gr.Row():
            with gr.Column(scale=1):
                inputs = [
                    gr.Textbox(cfg.pretrained, label="pipeline (hub id, local dir or run dir)",
                               elem_id="pretrained"),
                    gr.Radio(list(GUIDANCES), value=start.guidance, label="guidance",
                             elem_id="guidance"),
                    gr.ColorPicker(start.colour, label="target colour", elem_id="colour"),
                    gr.Textbox(prompt, label="CLIP prompt", elem_id="prompt"),
                    gr.Textbox(str(start.scale), label="guidance scale", elem_id="scale"),
                    gr.Checkbox(start.through_unet, label="gradient through the UNet",
                                elem_id="through_unet"),
                    gr.Dropdown(list(SCHEDULES), value=start.schedule, label="guidance schedule",
                                elem_id="schedule"),
                    gr.Dropdown(list(SCHEDULERS), value=start.scheduler, label="scheduler",
                                elem_id="scheduler"),
                    gr.Slider(1, cfg.max_steps, value=start.num_inference_steps, step=1,
                              label="steps", elem_id="steps"),
                    gr.Slider(1, cfg.max_images, value=start.num_images, step=1,
                              label="number of images", elem_id="num_images"),
                    gr.Number(start.seed, precision=0, label="seed", elem_id="seed"),
                    gr.Textbox("", label="class label (conditional pipelines; empty: every "
                               "class)", elem_id="class_label"),
                    gr.Textbox("", label="CFG scale (empty: none)", elem_id="cfg_scale"),
                ]  # fmt: skip
                button = gr.Button("Sample", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                progress = gr.Image(label="x_t (top) and the x̂0 it predicts (bottom)",
                                    type="pil", elem_id="progression")  # fmt: skip
                with gr.Row():
                    guided = gr.Image(label="guided", type="pil", elem_id="guided_grid")
                    unguided = gr.Image(label="unguided, same noise", type="pil",
                                        elem_id="unguided_grid")  # fmt: skip
                archive = gr.File(label="download: PNGs and command.txt", elem_id="download")
                shown = gr.Textbox(label="reproduce with", elem_id="command", buttons=["copy"])
        button.click(sample, inputs, [progress, status, guided, unguided, archive, shown])
    return page


def serve(cfg: DictConfig, config_dir: Path) -> None:
    """Serve the page on `cfg.host:cfg.port` until interrupted (`check_demo_config` first)."""
    # Gradio's request threads switch matplotlib's backend (importing pyplot) while a sampling
    # thread imports pyplot for the progression picture: two threads importing it at once, one
    # meets it half-initialised and its request never ends. Imported here, before any request.
    pyplot()
    page = build_demo(cfg, config_dir)
    page.queue(default_concurrency_limit=1)  # one sampling at a time; other tabs wait their turn
    page.launch(server_name=cfg.host, server_port=cfg.port, share=False, show_error=False,
                allowed_paths=[str(Path(cfg.paths.output_dir).resolve())])  # fmt: skip
