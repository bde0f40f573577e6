"""Hostile and corrupt inputs are refused with one line naming the file, at open or at the read that
sees them, without decoding or allocating what a forged header declares (issue 10, defects 6-8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from magnet_cli.describe import info
from magnet_cli.errors import InputError
from magnet_cli.io.base import Box
from magnet_cli.io.open import open_image
from tests.io.fuzz_corpus import float_tiff_with, patch_tag, write_base_tiff, write_ome_zarr, write_zarr_array


def read_all(path: Path, **options) -> None:
    with open_image(path, **options) as source:
        source.read(Box(0, 0, source.height, source.width), source.height, source.width)


@pytest.fixture
def base_tiff(tmp_path: Path) -> Path:
    return write_base_tiff(tmp_path / "base.tif")


@pytest.fixture
def forged_tiff(base_tiff: Path) -> Path:
    """Claims 10^7 x 10^7 pixels; its tile tables hold the 16 tiles of a 256 x 256 image."""
    patch_tag(base_tiff, 256, 10**7)
    return patch_tag(base_tiff, 257, 10**7)


def test_tiff_declaring_more_tiles_than_its_tables_is_refused_at_open(forged_tiff):
    with pytest.raises(InputError, match=r"base.tif: declares 10000000x10000000 pixels .* list only 16"):
        open_image(forged_tiff, max_pixels=10**15)


def test_tiff_with_a_missing_tile_is_refused_not_read_as_zeros(base_tiff):
    patch_tag(base_tiff, 325, 0, start=5)  # TileByteCounts[5] = 0: tifffile would serve zeros
    with pytest.raises(InputError, match=r"base.tif: 1 of 16 tiles are missing"):
        open_image(base_tiff)


def test_tiff_whose_tiles_point_past_the_end_is_refused_at_open(base_tiff):
    patch_tag(base_tiff, 324, 10**9, start=3)
    with pytest.raises(InputError, match=r"base.tif: 1 of 16 tiles lie past the end of the file"):
        open_image(base_tiff)


def test_tiff_tile_larger_than_the_image_is_refused_before_decoding(base_tiff):
    patch_tag(base_tiff, 322, 134217792)  # TileWidth: one zlib tile would decode into 25 GB
    with pytest.raises(InputError, match=r"base.tif: tile of 64x134217792x3 samples, larger than the image"):
        open_image(base_tiff)


@pytest.mark.parametrize("bits", [1, 7])
def test_unsupported_bit_depths_are_refused(base_tiff, bits):
    patch_tag(base_tiff, 258, [bits] * 3)
    with pytest.raises(InputError, match=rf"base.tif: unsupported bit depth \({bits} bits per sample"):
        open_image(base_tiff)


def test_bilevel_tiff_is_refused(tmp_path):
    path = tmp_path / "bilevel.tif"
    tifffile.imwrite(path, np.ones((64, 64), bool), tile=(16, 16))
    with pytest.raises(InputError, match=r"bilevel.tif: unsupported bit depth \(1 bits"):
        open_image(path)


def test_image_above_max_pixels_is_refused(base_tiff):
    with pytest.raises(InputError, match=r"base.tif: declares 256x256 = 6.55e\+04 pixels, above the limit of 1e\+04"):
        open_image(base_tiff, max_pixels=10_000)
    open_image(base_tiff, max_pixels=256 * 256).close()


def test_zarr_declaring_a_huge_shape_without_chunks_is_refused(tmp_path):
    path = write_zarr_array(tmp_path / "forged.zarr", {"shape": [10**7, 10**7]})
    with pytest.raises(InputError, match=r"forged.zarr: declares 1e\+14 pixels but stores no chunk"):
        open_image(path, max_pixels=10**15)


def test_small_zarr_without_chunks_is_an_all_fill_image(tmp_path):
    """Writers that skip empty chunks store an all-background mask as metadata only: that stays readable."""
    path = write_zarr_array(tmp_path / "blank.zarr", {})
    with open_image(path) as source:
        assert source.read_level(0, 0, 0, 256, 256).max() == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e31])
def test_non_finite_or_absurd_float_pixels_are_refused_at_read(tmp_path, value):
    path = float_tiff_with(tmp_path / "float.tif", value, count=1, seed=3)
    with pytest.raises(InputError, match=r"float.tif: (NaN or infinite|float pixel values beyond)"):
        read_all(path)


def test_float_pixels_in_a_sane_range_are_read(tmp_path):
    path = float_tiff_with(tmp_path / "float.tif", 1e6, count=1, seed=3)
    read_all(path)


@pytest.mark.parametrize("dataset", ["../secret", "/secret", "0/../../secret", "./0", ""])
def test_ome_zarr_dataset_path_leaving_the_image_is_refused(tmp_path, dataset):
    path = write_ome_zarr(tmp_path / "image.ome.zarr", dataset)
    with pytest.raises(InputError, match=r"image.ome.zarr: OME-Zarr dataset path .* leaves the image folder"):
        open_image(path)


def test_info_warns_about_what_segment_would_refuse(forged_tiff):
    described = info(forged_tiff)
    assert described["height"] == 10**7
    assert any("list only 16" in warning for warning in described["warnings"])
    assert any("above the limit" in warning for warning in described["warnings"])
    json.dumps(described)


def test_info_warns_about_unsupported_bit_depth_and_missing_tiles(base_tiff):
    patch_tag(base_tiff, 258, [7, 7, 7])
    patch_tag(base_tiff, 324, 0, start=0)
    warnings = info(base_tiff)["warnings"]
    assert [w.split(" (")[0] for w in warnings] == ["unsupported bit depth", "1 of 16 tiles are missing"]


def test_info_of_a_sound_image_has_no_warnings(tmp_path):
    assert info(write_base_tiff(tmp_path / "fine.tif"))["warnings"] == []
