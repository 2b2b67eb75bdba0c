"""The pipeline export swap: a loadable pipeline at every moment, whatever step is interrupted."""

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

import difftune.hub.pipelines as pipeline_io
from helpers.models import make_tiny_unet
from helpers.runs import conv_in


def test_an_export_killed_midway_leaves_the_previous_pipeline_loadable(tmp_path, monkeypatch):
    from diffusers import DDPMPipeline, DDPMScheduler

    out = tmp_path / "pipeline"
    pipeline_io.export_pipeline(make_tiny_unet(seed=0), DDPMScheduler(), out)
    before = DDPMPipeline.from_pretrained(out).unet.conv_in.weight.clone()

    def dies_after_the_unet(self, save_directory, **kwargs):
        (Path(save_directory) / "unet").mkdir(parents=True)
        (Path(save_directory) / "unet" / "config.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", dies_after_the_unet)
    with pytest.raises(KeyboardInterrupt):
        pipeline_io.export_pipeline(make_tiny_unet(seed=1), DDPMScheduler(), out)
    monkeypatch.undo()
    after = DDPMPipeline.from_pretrained(out).unet.conv_in.weight
    assert torch.equal(before, after)


SWAP_OPS = [(os, "rename"), (os, "replace"), (os, "symlink"), (os, "unlink"), (shutil, "rmtree")]


def test_the_export_swap_leaves_a_loadable_pipeline_at_every_moment(tmp_path, monkeypatch):
    run = tmp_path / "run"
    out = run / "pipeline"
    pipeline_io.export_pipeline(make_tiny_unet(seed=0), DDPMScheduler(), out)
    old, new = conv_in(out), make_tiny_unet(seed=1).conv_in.weight.detach().clone()
    seen, checking = [], []

    def check(op: str) -> None:
        if checking:  # loading calls the file system too
            return
        checking.append(op)
        try:
            by_diffusers = conv_in(out)
            by_sample_py = pipeline_io.load_unet(str(run)).conv_in.weight.detach()
        finally:
            checking.pop()
        assert torch.equal(by_diffusers, by_sample_py), op
        assert torch.equal(by_diffusers, old) or torch.equal(by_diffusers, new), op
        seen.append(op)

    for module, name in SWAP_OPS:
        original = getattr(module, name)

        def spied(*args, _original=original, _name=name, **kwargs):
            check(f"before {_name}")
            result = _original(*args, **kwargs)
            check(f"after {_name}")
            return result

        monkeypatch.setattr(module, name, spied)
    pipeline_io.export_pipeline(make_tiny_unet(seed=1), DDPMScheduler(), out)
    monkeypatch.undo()
    assert len(seen) >= 4 and torch.equal(conv_in(out), new)


class Killed(BaseException):
    """The process ends here."""


def dies_at(monkeypatch, step: int) -> list[str]:
    """Make the `step`-th file operation of the swap (0-based) raise `Killed`; returns the calls."""
    calls: list[str] = []
    for module, name in SWAP_OPS:
        original = getattr(module, name)

        def dies(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            if len(calls) == step + 1:
                raise Killed
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, dies)
    return calls


def test_an_export_interrupted_at_any_step_keeps_a_pipeline_and_leaves_no_temp_dirs(
    tmp_path, monkeypatch
):
    old, new = make_tiny_unet(seed=0), make_tiny_unet(seed=1)
    for step in range(20):
        out = tmp_path / str(step) / "pipeline"
        pipeline_io.export_pipeline(old, DDPMScheduler(), out)
        calls = dies_at(monkeypatch, step)
        with contextlib.suppress(Killed):
            pipeline_io.export_pipeline(new, DDPMScheduler(), out)
        monkeypatch.undo()
        now = conv_in(out)
        assert any(torch.equal(now, unet.conv_in.weight) for unet in (old, new)), calls
        pipeline_io.export_pipeline(make_tiny_unet(seed=2), DDPMScheduler(), out)  # cleans up
        assert torch.equal(conv_in(out), make_tiny_unet(seed=2).conv_in.weight)
        names = sorted(p.name for p in out.parent.iterdir())
        assert names == sorted(["pipeline", out.readlink().name]), calls
        if len(calls) <= step:
            break  # the export has fewer steps: every one was interrupted once


def test_an_export_over_a_plain_pipeline_dir_replaces_it(tmp_path, tiny_pipeline_dir):
    out = tmp_path / "exports" / "pipe"
    shutil.copytree(tiny_pipeline_dir, out)  # as exports were before the swap was versioned
    pipeline_io.export_pipeline(make_tiny_unet(seed=3), DDPMScheduler(), out)
    assert torch.equal(conv_in(out), make_tiny_unet(seed=3).conv_in.weight)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["pipe", out.readlink().name])
