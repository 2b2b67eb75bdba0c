"""Synthetic styles: deterministic per seed, in range, one scene in three styles; `style_of`."""

import pytest
import torch

from difftune.data import SyntheticStyleDataset
from difftune.data.synthetic import STYLES, render, style_of


def test_synthetic_is_deterministic_per_seed() -> None:
    a = SyntheticStyleDataset(num_images=4, image_size=32, seed=3)
    b = SyntheticStyleDataset(num_images=4, image_size=32, seed=3)
    c = SyntheticStyleDataset(num_images=4, image_size=32, seed=4)
    for i in range(4):
        assert torch.equal(a[i], b[i])
        assert (a[i] - c[i]).abs().mean() > 0.05
    assert (a[0] - a[1]).abs().mean() > 0.05


@pytest.mark.parametrize("size", [8, 32, 64])
@pytest.mark.parametrize("style", ["photo", "vintage", "cyanotype"])
def test_synthetic_shape_and_range(size: int, style: str) -> None:
    x = SyntheticStyleDataset(num_images=2, image_size=size, style=style)[1]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.max() - x.min() > 0.5


def test_styles_differ_but_share_the_scene() -> None:
    photo = torch.stack(list(SyntheticStyleDataset(8, 32, "photo", seed=1)))
    vintage = torch.stack(list(SyntheticStyleDataset(8, 32, "vintage", seed=1)))
    spread = lambda x: (x.amax(dim=1) - x.amin(dim=1)).mean().item()  # noqa: E731
    assert spread(vintage) < 0.4 * spread(photo)  # sepia: channels move together
    assert vintage[:, 0].mean() > vintage[:, 2].mean() + 0.2  # warm tone: red above blue
    assert vintage.std() < photo.std()  # faded contrast
    luma = lambda x: (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten()  # noqa: E731
    corr = torch.corrcoef(torch.stack([luma(photo), luma(vintage)]))[0, 1]
    assert corr > 0.7  # same underlying scene


def test_cyanotype_is_blue_monochrome_of_the_scene() -> None:
    photo = torch.stack(list(SyntheticStyleDataset(8, 32, "photo", seed=1)))
    cyan = torch.stack(list(SyntheticStyleDataset(8, 32, "cyanotype", seed=1)))
    assert cyan[:, 2].mean() > cyan[:, 0].mean() + 0.3  # Prussian blue: blue well above red
    dark = torch.tensor([0.05, 0.15, 0.35])[:, None] * 2 - 1  # the tone's ends, in [-1, 1]
    light = torch.tensor([0.85, 0.92, 0.98])[:, None] * 2 - 1
    pixels = cyan.permute(1, 0, 2, 3).flatten(1)  # 3 × all pixels
    t = ((pixels - dark) * (light - dark)).sum(0) / (light - dark).square().sum()
    off_tone = (pixels - dark - t * (light - dark)).abs().mean()
    assert off_tone < 0.03 and t.min() < 0.05 and t.max() > 0.95  # dark to light, on the tone
    luma = lambda x: (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten()  # noqa: E731
    assert torch.corrcoef(torch.stack([luma(photo), luma(cyan)]))[0, 1] > 0.9  # same scene


@pytest.mark.parametrize("style", STYLES)
def test_style_of_labels_renders(style: str) -> None:
    data = SyntheticStyleDataset(200, 32, style, seed=11)
    assert sum(style_of(data[i]) == style for i in range(200)) >= 196  # >= 98 %
    noise = torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = [torch.nn.functional.avg_pool2d(data[i][None], 2)[0] for i in range(100)]
    assert sum(style_of(data[i] + 0.2 * noise[i]) == style for i in range(200)) >= 196
    assert sum(style_of(x) == style for x in blurred) >= 98  # samples are noisier, blurrier
    arrays = [render(i, 12, 32, style) * 2 - 1 for i in range(50)]  # H×W×3 arrays, [-1, 1]
    assert sum(style_of(a) == style for a in arrays) >= 49
