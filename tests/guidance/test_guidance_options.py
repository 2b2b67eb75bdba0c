"""The `guidance.*` keys of a command line are checked before torch loads, as the presets check
them when they are built: the same keys, the same verdicts."""

import hydra
import pytest
from omegaconf import OmegaConf

from difftune.guidance.options import (
    GUIDANCE_KEYS,
    PRESET_KEYS,
    PRESETS,
    GuidanceError,
    check_guidance_config,
)
from helpers.compose import CONF, compose_sample


@pytest.mark.parametrize("preset", sorted(PRESET_KEYS))
def test_the_checked_keys_are_the_preset_files_keys(preset):
    node = OmegaConf.load(CONF / "guidance" / f"{preset}.yaml")
    assert PRESETS[node._target_] == preset
    assert set(node) - {"_target_"} == {*GUIDANCE_KEYS, *PRESET_KEYS[preset]}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["guidance=color", "guidance.scale=abc"], "guidance.scale='abc': expected a finite"),
        (["guidance=color", "guidance.through_unet=maybe"], "guidance.through_unet='maybe': exp"),
        (["guidance=color", "guidance.grad_clip_rms=0"], "guidance.grad_clip_rms=0: expected > 0"),
        (["guidance=color", "guidance.target_rgb=[0.1,0.2,1.5]"], r"guidance.target_rgb=\[0.1,"),
        (["guidance=clip", "guidance.prompt=[]"], r"guidance.prompt=\[\]: expected non-empty"),
        (["guidance=clip", "guidance.cut_batches=5"], r"guidance.cut_batches=5: expected 1..n_c"),
        (["guidance=clip", "+guidance.cuts=2"], "guidance.cuts=2: not a key of guidance=clip; i"),
        (["guidance=clip", "~guidance.scale"], "guidance.scale: missing from guidance=clip"),
        (["guidance=[clip,color]"], r"guidance=\[clip,color\]: Hydra merges a list of presets"),
    ],
)
def test_a_bad_key_is_the_line_the_preset_would_say(overrides, message, tmp_path):
    cfg = compose_sample(*overrides, output_dir=tmp_path)
    with pytest.raises(GuidanceError, match=message):
        check_guidance_config(cfg.guidance)


def test_what_the_check_passes_the_preset_builds(tmp_path):
    cfg = compose_sample("guidance=color", "guidance.scale=60", output_dir=tmp_path)
    check_guidance_config(cfg.guidance)
    assert hydra.utils.instantiate(cfg.guidance).scale == 60.0


def test_a_guidance_of_the_users_own_is_left_to_its_constructor():
    check_guidance_config(OmegaConf.create({"_target_": "mylab.Guide", "scale": "anything"}))
    check_guidance_config(None)  # guidance=none
