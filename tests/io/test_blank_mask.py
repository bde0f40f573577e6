"""The blank mask (io/blank_mask.py): declared no-data, alpha, uniform glass, mask files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from magnet_cli.io.array import ArraySource
from magnet_cli.io.blank_mask import BlankMask, blank_mask, label_nodata
from magnet_cli.io.open import open_image

from tests.conftest import random_rgb


def test_box_and_pixel_queries_follow_the_cells():
    cells = np.zeros((4, 4), dtype=bool)
    cells[:, :2] = True  # columns 0..7 of a 16 x 16 image in 4 px cells
    mask = BlankMask(cells, 0.25, 0.25)
    assert mask.all_blank(0, 0, 16, 8) and not mask.all_blank(0, 0, 16, 8.5)
    assert mask.pixels(0, 6, 2, 10).tolist() == [[True, True, False, False]] * 2
    assert mask.fraction == 0.5


def test_the_no_data_label_is_the_top_of_the_label_type():
    assert label_nodata(np.uint8) == 255 and label_nodata(np.uint16) == 65535


def test_an_input_declaring_nothing_costs_nothing_by_default(monkeypatch):
    source = ArraySource(random_rgb(64, 64))
    monkeypatch.setattr(source, "read_level", lambda *a: pytest.fail("read for a mask nobody needs"))
    assert blank_mask(source, "nodata") is None and blank_mask(source, "none") is None


def test_a_declared_nodata_value_is_blank_where_every_band_holds_it():
    image = random_rgb(64, 64) | 1  # no zero anywhere
    image[:, :32] = 0
    image[:4, 40:44, 0] = 0  # one band at the no-data value is still data
    source = ArraySource(image)
    source.georeference = {"GDAL_NODATA": "0"}
    mask = blank_mask(source, "nodata")
    assert mask.pixels(0, 0, 64, 64)[:, :32].all() and not mask.pixels(0, 0, 64, 64)[:, 32:].any()


def test_alpha_zero_in_an_rgba_png_and_tiff_is_blank(tmp_path):
    rgba = np.dstack([random_rgb(64, 64), np.full((64, 64), 255, np.uint8)])
    rgba[32:, :, 3] = 0
    skio.imsave(tmp_path / "a.png", rgba, check_contrast=False)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=[2])
    for name in ("a.png", "a.tif"):
        with open_image(tmp_path / name) as source:
            assert source.alpha_band == 3
            blank = blank_mask(source, "nodata").pixels(0, 0, 64, 64)
        assert blank[32:].all() and not blank[:32].any(), name


def test_a_four_band_tiff_without_extra_samples_has_no_alpha(tmp_path):
    tifffile.imwrite(tmp_path / "rgbn.tif", np.zeros((32, 32, 4), np.uint16), planarconfig="contig", photometric="minisblack")
    with open_image(tmp_path / "rgbn.tif") as source:
        assert source.alpha_band is None


def test_a_mask_file_of_another_size_spans_the_image(tmp_path):
    tissue = np.zeros((50, 30), np.uint8)
    tissue[:, 15:] = 1  # right half tissue (nonzero), left half background (0)
    skio.imsave(tmp_path / "mask.png", tissue * 255, check_contrast=False)
    source = ArraySource(random_rgb(200, 120))
    blank = blank_mask(source, str(tmp_path / "mask.png")).pixels(0, 0, 200, 120)
    assert blank[:, :56].all() and not blank[:, 64:].any()


def test_auto_finds_glass_and_keeps_a_margin_around_tissue():
    rng = np.random.default_rng(0)
    slide = (235 + rng.integers(-3, 4, size=(512, 512, 3))).astype(np.uint8)  # glass with sensor noise
    slide[192:320, 160:352] = random_rgb(128, 192, seed=1)  # a tissue island
    mask = blank_mask(ArraySource(slide), "auto")
    blank = mask.pixels(0, 0, 512, 512)
    assert not blank[192:320, 160:352].any()  # tissue is never blank
    assert not blank[188:324, 156:356].any()  # nor its edge (the margin)
    assert blank[:128].all() and blank[400:].all()  # glass far from tissue is
    assert mask.fraction > 0.6


def test_a_nodata_value_the_sample_type_cannot_hold_matches_nothing():
    source = ArraySource(np.zeros((16, 16), np.uint16))
    source.georeference = {"GDAL_NODATA": "-9999"}
    assert not blank_mask(source, "nodata").blank.any()


@pytest.mark.parametrize("edge", ["bottom", "top", "left", "right"])
def test_auto_keeps_a_thin_sliver_of_tissue_at_the_image_edge(edge):
    """Tissue a few pixels thin along an edge of the image (a section cut by the scan's border) stays
    tissue: the clean-up of small blank specks must not grow glass over it from outside the image."""
    rng = np.random.default_rng(0)
    slide = (235 + rng.integers(-3, 4, size=(1024, 1024, 3))).astype(np.uint8)
    sliver = {"bottom": np.s_[1021:, 400:500], "top": np.s_[:3, 400:500],
              "left": np.s_[400:500, :3], "right": np.s_[400:500, 1021:]}[edge]
    slide[sliver] = random_rgb(*slide[sliver].shape[:2], seed=2)
    slide[100:300, 100:300] = random_rgb(200, 200, seed=3)  # the section itself
    mask = blank_mask(ArraySource(slide), "auto")
    blank = mask.pixels(0, 0, 1024, 1024)
    assert not blank[sliver].any()
    assert not blank[100:300, 100:300].any() and blank[600:900, 600:900].all()
