"""Synthetic styles: deterministic per seed, in range, one scene in two styles."""

import pytest
import torch

from difftune.data import SyntheticStyleDataset


def test_synthetic_is_deterministic_per_seed() -> None:
    a = SyntheticStyleDataset(num_images=4, image_size=32, seed=3)
    b = SyntheticStyleDataset(num_images=4, image_size=32, seed=3)
    c = SyntheticStyleDataset(num_images=4, image_size=32, seed=4)
    for i in range(4):
        assert torch.equal(a[i], b[i])
        assert (a[i] - c[i]).abs().mean() > 0.05
    assert (a[0] - a[1]).abs().mean() > 0.05


@pytest.mark.parametrize("size", [8, 32, 64])
@pytest.mark.parametrize("style", ["photo", "vintage"])
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
