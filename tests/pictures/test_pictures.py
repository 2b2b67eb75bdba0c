"""Pictures: diffusers' converters, and why the grids stay torchvision's `make_grid`."""

import warnings

import numpy as np
import pytest
import torch
from diffusers.utils import make_image_grid, pt_to_pil
from PIL import Image, ImageDraw

from difftune.pictures.images import grid_image, montage, to_pil_list


def test_grids_keep_gaps_and_partial_rows_that_diffusers_make_image_grid_lacks():
    """Five 4 px images, three a row: 2 px black gaps around each, the last row partial."""
    x = torch.stack([torch.full((3, 4, 4), 1.0)] * 5)  # white images
    pixels = np.asarray(grid_image(x).convert("L"))
    assert pixels.shape == (2 + 2 * 6, 2 + 3 * 6)
    assert pixels[2:6, 2:6].min() == 255 and pixels[2:6, 8:12].min() == 255  # two images...
    assert pixels[2:6, 6:8].max() == 0  # ...apart
    assert pixels[8:12, 14:18].max() == 0  # no sixth image: the row is partial
    with pytest.raises(AssertionError):  # diffusers: exactly rows × cols images
        make_image_grid(pt_to_pil(x), rows=2, cols=3)
    theirs = np.asarray(make_image_grid(pt_to_pil(x[:4]), rows=2, cols=2).convert("L"))
    assert theirs.shape == (8, 8) and theirs.min() == 255  # no gaps: the images run together


def test_pil_images_are_diffusers_pt_to_pil_of_the_detached_batch_with_nan_black():
    x = torch.randn(3, 3, 5, 5, requires_grad=True) * 1.5
    ours = to_pil_list(x)
    theirs = pt_to_pil(x.detach())
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert to_pil_list(x[0])[0].size == (5, 5)  # one C×H×W image
    assert to_pil_list(torch.zeros(2, 1, 3, 3))[0].mode == "L"
    nan = torch.full((1, 3, 2, 2), float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value encountered in cast" is noise
        assert np.asarray(to_pil_list(nan)[0]).max() == 0
        assert np.asarray(grid_image(nan)).max() == 0


def test_a_label_wider_than_its_picture_is_shown_whole_and_the_next_panel_moves_over():
    """sample.py's comparison.png at 2 images: `guided: colour (0.8, 0.4, 0.6), scale 40` was cut
    at the next panel, hiding the scale."""
    label = "guided: colour (0.8, 0.4, 0.6), scale 40"
    narrow = Image.new("RGB", (64, 32), "red")
    canvas = montage([(label, narrow), ("unguided", Image.new("RGB", (64, 32), "blue"))])
    wide = ImageDraw.Draw(Image.new("1", (1, 1))).textlength(label)
    second = next(x for x in range(canvas.width) if canvas.getpixel((x, 20)) == (0, 0, 255))
    assert second >= wide + 8  # the blue picture starts after the whole label and the gap
    text = np.asarray(canvas.crop((64, 0, second - 8, 14)).convert("L"))
    assert (text < 128).any()  # the label's tail is drawn beyond the red picture
