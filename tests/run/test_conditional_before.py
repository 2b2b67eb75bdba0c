"""Before the embedded conditional demo fine-tunes it (a fresh class embedding on the base,
cfg_scale=1), the labels do nothing: every class samples the base's photo style."""

import pytest

from difftune.core.conditioning import add_class_embedding
from difftune.hub.pipelines import export_pipeline, load_noise_scheduler, load_unet
from helpers.styles import STYLES, accuracy

pytestmark = pytest.mark.slow


def test_before_fine_tuning_the_labels_do_nothing(tmp_path):
    """A fresh (zero) class embedding on the base: every label samples the base's photo style."""
    unet = add_class_embedding(load_unet("difftune/tiny_base"), STYLES)
    pipeline = export_pipeline(unet, load_noise_scheduler("difftune/tiny_base"), tmp_path / "p")
    score, confusion = accuracy(pipeline, tmp_path / "before", "cfg_scale=1", per_class=10)
    assert score <= 1 / 3 + 0.15, confusion  # seen: every sample "photo", 1/3
