"""Conversion of raw samples to float RGB, level choice and bounded banded reads of ImageSource."""

import numpy as np
import pytest
import torch

from magnet_cli.errors import InputError
from magnet_cli.io import base
from magnet_cli.io.array import ArraySource
from magnet_cli.io.base import Box, PixelNormalization, to_model_input


def test_gray_is_replicated_to_rgb():
    out = to_model_input(np.array([[0, 255]], np.uint8), PixelNormalization())
    assert out.shape == (3, 1, 2) and torch.equal(out[:, 0, 1], torch.ones(3))


def test_rgba_drops_alpha_and_gray_alpha_keeps_gray():
    rgba = np.array([[[255, 0, 51, 7]]], np.uint8)
    assert torch.allclose(to_model_input(rgba, PixelNormalization())[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    gray_alpha = np.array([[[102, 0]]], np.uint8)
    assert torch.allclose(to_model_input(gray_alpha, PixelNormalization())[:, 0, 0], torch.full((3,), 0.4))


def test_uint16_and_float_scale_to_unit_range_and_value_range_overrides():
    assert to_model_input(np.full((1, 1, 3), 65535, np.uint16), PixelNormalization()).max() == 1.0
    floats = np.array([[[-0.5, 0.25, 2.0]]], np.float32)
    assert to_model_input(floats, PixelNormalization())[:, 0, 0].tolist() == [0.0, 0.25, 1.0]  # clamped
    twelve_bit = np.full((1, 1, 3), 2048, np.uint16)
    assert torch.allclose(to_model_input(twelve_bit, PixelNormalization(value_range=(0, 4096))), torch.full((3, 1, 1), 0.5))


def test_bands_choose_and_order_channels():
    raster = np.arange(6, dtype=np.uint8).reshape(1, 1, 6) * 50
    out = to_model_input(raster, PixelNormalization(bands=(5, 0, 2)))
    assert torch.allclose(out[:, 0, 0], torch.tensor([250, 0, 100]) / 255)
    with pytest.raises(InputError, match="--bands"):
        to_model_input(raster, PixelNormalization())
    with pytest.raises(InputError, match="6 band"):
        to_model_input(raster, PixelNormalization(bands=(0, 1, 9)))


def test_unsupported_dtype_is_an_input_error():
    with pytest.raises(InputError, match="unsupported"):
        to_model_input(np.zeros((1, 1, 3), np.int64), PixelNormalization())


def test_coarse_read_uses_the_coarsest_level_that_is_fine_enough():
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    source = ArraySource(image, pyramid=[image[::2, ::2], image[::4, ::4]])
    calls = []
    original = source.read_level
    source.read_level = lambda level, *box: calls.append(level) or original(level, *box)
    source.read(Box(0, 0, 256, 256), 64, 64)  # downsample 4: level 2 exactly
    source.read(Box(0, 0, 256, 256), 100, 100)  # downsample 2.56: level 1 (level 2 is too coarse)
    source.read(Box(0, 0, 64, 64), 64, 64)  # full resolution
    assert calls == [2, 1, 0]


def test_banded_reads_equal_one_read_and_stay_within_the_pixel_budget(monkeypatch):
    image = np.random.default_rng(1).integers(0, 256, (512, 384, 3), dtype=np.uint8)
    source = ArraySource(image)
    whole = source.read(Box(0, 0, 512, 384), 128, 96)
    monkeypatch.setattr(base, "MAX_SOURCE_PIXELS_PER_READ", 384 * 40)
    sizes = []
    original = source.read_level
    source.read_level = lambda level, y0, x0, y1, x1: sizes.append((y1 - y0) * (x1 - x0)) or original(level, y0, x0, y1, x1)
    banded = source.read(Box(0, 0, 512, 384), 128, 96)
    assert len(sizes) > 1 and max(sizes) <= 384 * 40
    assert torch.allclose(banded, whole, atol=1e-6)  # a 4x factor: bands hold whole output rows


@pytest.mark.parametrize(
    ("axes", "shape"),
    [("YX", (5, 6)), ("YXC", (5, 6, 3)), ("CYX", (7, 5, 6)), ("_YX", (9, 5, 6)), ("_C_YX", (1, 3, 4, 5, 6)),
     ("___YXC", (1, 1, 2, 5, 6, 3)), ("YX", (1, 1))],
)
def test_check_axes_accepts_a_plane_with_bands_and_at_most_one_stack_axis(axes, shape):
    base.check_axes("img", axes, shape)


@pytest.mark.parametrize(
    ("axes", "shape", "message"),
    [
        ("__YX", (2, 2, 5, 6), r"img: 4 non-band dimensions \(shape \(2, 2, 5, 6\)\); at most 3"),
        ("___YX", (2, 2, 2, 5, 6), r"img: 5 non-band dimensions"),
        ("_C_YX", (2, 3, 2, 5, 6), r"img: 4 non-band dimensions"),
        ("CCYX", (2, 3, 5, 6), r"img: more than one band axis"),
        ("_YY", (2, 5, 6), r"img: cannot find one y and one x axis"),
        ("C_X", (3, 5, 6), r"img: cannot find one y and one x axis"),
    ],
)
def test_check_axes_refuses_other_layouts_in_one_line(axes, shape, message):
    with pytest.raises(InputError, match=message) as error:
        base.check_axes("img", axes, shape)
    assert "\n" not in str(error.value)


def test_check_axes_names_the_axes_when_given():
    with pytest.raises(InputError, match=r"\(axes t,z,y,x, shape \(2, 2, 5, 6\)\)"):
        base.check_axes("img", "__YX", (2, 2, 5, 6), ["t", "z", "y", "x"])
