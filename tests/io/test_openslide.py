"""Whole-slide formats through OpenSlide: the same generic tiled TIFF read through OpenSlide and through
tifffile gives the same pixels, levels and labels; without the extra, a slide is one line naming it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.errors import InputError
from magnet_cli.io import open as open_module
from magnet_cli.io import openslide_source
from magnet_cli.io.labels import read_labels
from magnet_cli.io.open import describe, list_images, open_image
from magnet_cli.io.openslide_source import OpenSlideSource, _over_background
from magnet_cli.io.pixel_size import PixelSize
from magnet_cli.io.tiff import TiffSource

from .conftest import HEIGHT, VMS_MPP, WIDTH

# Every test but the missing-extra one needs the [openslide] extra (it is in the `test` extra).
needs_openslide = pytest.mark.skipif(importlib.util.find_spec("openslide") is None, reason="no [openslide] extra")

MPP_X, MPP_Y = 0.25, 0.5  # micrometres per pixel written into the resolution tags (unequal: no swap hides)


def write_slide_tiff(path: Path, image: np.ndarray, levels: int = 3) -> Path:
    """A generic tiled TIFF as OpenSlide's generic-tiff driver reads it: every level a tiled top-level
    page (OpenSlide does not follow SubIFDs), zlib tiles, the resolution in pixels per centimetre."""
    options = dict(
        tile=(64, 64), photometric="rgb", compression="zlib", resolution=(1e4 / MPP_X, 1e4 / MPP_Y), resolutionunit="CENTIMETER"
    )
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, **options)
        for k in range(1, levels):
            tif.write(image[:: 2**k, :: 2**k], subfiletype=1, **options)
    return path


@pytest.fixture
def slide_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    pytest.importorskip("openslide", reason="no [openslide] extra")
    return write_slide_tiff(tmp_path / "slide.tif", rgb)


def test_openslide_reads_the_same_levels_and_pixels_as_tifffile(slide_tiff):
    with OpenSlideSource(slide_tiff) as slide, TiffSource(slide_tiff) as tiff:
        assert slide.format_name == "OpenSlide (generic-tiff)"
        assert (slide.height, slide.width, slide.bands, slide.dtype) == (HEIGHT, WIDTH, 3, np.uint8)
        assert slide.levels == tiff.levels and len(slide.levels) == 3
        assert slide.chunks == (64, 64)
        for level, shape in enumerate(slide.levels):
            # whole level, a region across tile corners, one ending in the partial edge tiles
            h, w = shape.height, shape.width
            for y0, x0, y1, x1 in [(0, 0, h, w), (5, 60, min(h, 70), min(w, 131)), (h - 9, 3, h, w)]:
                np.testing.assert_array_equal(slide.read_level(level, y0, x0, y1, x1), tiff.read_level(level, y0, x0, y1, x1))
            with pytest.raises(ValueError, match="outside a level"):  # as every reader: a bug, not a user error
                slide.read_level(level, 0, 0, h + 1, w)


def test_the_slides_microns_per_pixel_are_its_pixel_size_and_in_info(slide_tiff):
    with OpenSlideSource(slide_tiff) as slide:
        assert (slide.extra["mpp_x"], slide.extra["mpp_y"]) == (MPP_X, MPP_Y)
        assert slide.pixel_size == PixelSize(MPP_Y, MPP_X, "um")
        assert slide.extra["vendor"] == "generic-tiff"
        info = json.loads(json.dumps(describe(slide)))
    assert info["pixel_size"] == "0.5 x 0.25 um (y x)" and info["format"] == "OpenSlide (generic-tiff)"
    with open_image(slide_tiff) as tiff:  # tifffile reads the same resolution tags OpenSlide's mpp comes from
        assert tiff.pixel_size == PixelSize(MPP_Y, MPP_X, "um")


def test_large_reads_go_to_openslide_in_bounded_strips(slide_tiff, monkeypatch):
    monkeypatch.setattr(openslide_source, "MAX_SOURCE_PIXELS_PER_READ", 1000)
    with OpenSlideSource(slide_tiff) as slide, TiffSource(slide_tiff) as tiff:
        sizes: list[tuple[int, int]] = []
        original = slide._slide.read_region

        def spy(location, level, size):
            sizes.append(size)
            return original(location, level, size)

        slide._slide.read_region = spy
        for level in (0, 1):
            region = slide.read_level(level, 7, 11, 140, 190)
            np.testing.assert_array_equal(region, tiff.read_level(level, 7, 11, 140, 190))
    assert len(sizes) == 2 * -(-133 // (1000 // 179))  # strips of 5 rows of 179 pixels, at each level
    assert all(w * h <= 1000 for w, h in sizes)


def test_transparent_pixels_outside_the_scan_are_the_background_colour():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 51]]], np.uint8)
    # 51/255 = 0.2 of the colour over 0.8 of the background (0, 0, 100 here), rounded
    np.testing.assert_array_equal(_over_background(rgba, (0, 0, 100)), [[[10, 20, 30], [0, 0, 100], [40, 20, 80]]])


@needs_openslide
def test_segment_through_openslide_gives_the_same_labels_as_through_tifffile(bundle_dir, tmp_path, monkeypatch):
    from tests.conftest import random_rgb

    path = write_slide_tiff(tmp_path / "scene.tif", random_rgb(384, 320, seed=2))
    runner = CliRunner()

    def segment(out: Path):
        args = ["segment", path, "-o", out, "--model", bundle_dir, "--no-progress", "--device", "cpu"]
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return read_labels(out)

    through_tifffile = segment(tmp_path / "tifffile.zarr")
    opened: list[OpenSlideSource] = []

    def through_openslide(p: Path) -> OpenSlideSource:
        opened.append(OpenSlideSource(p))
        return opened[-1]

    monkeypatch.setitem(open_module.READERS, "tiff", through_openslide)  # a TIFF, read as OpenSlide would
    labels = segment(tmp_path / "openslide.zarr")
    assert opened and len(opened[0].levels) == 3
    assert labels.shape == (384, 320) and len(np.unique(labels)) > 1
    np.testing.assert_array_equal(labels, through_tifffile)


def test_tiff_based_slides_stay_on_tifffile_and_other_slides_go_to_openslide(tmp_path, slide_tiff):
    named_mrxs = tmp_path / "tiff_named.mrxs"
    shutil.copy(slide_tiff, named_mrxs)
    with open_image(named_mrxs) as source:
        assert isinstance(source, TiffSource)
    (tmp_path / "scan.mrxs").write_bytes(b"")  # no Slidedat.ini folder beside it
    with pytest.raises(InputError, match=r"scan.mrxs: not a MIRAX slide OpenSlide can read"):
        open_image(tmp_path / "scan.mrxs")
    (tmp_path / "level.dcm").write_bytes(b"\0" * 200)
    assert [p.name for p in list_images(tmp_path)] == ["scan.mrxs", "slide.tif", "tiff_named.mrxs"]


def test_a_hamamatsu_vms_slide_opens_through_openslide_with_its_levels_and_mpp(vms_slide):
    from PIL import Image

    with open_image(vms_slide) as source:
        assert isinstance(source, OpenSlideSource) and source.format_name == "OpenSlide (hamamatsu)"
        assert (source.height, source.width) == (256, 384)
        assert [level.downsample_y for level in source.levels][:4] == [1.0, 2.0, 4.0, 8.0]  # OpenSlide's own
        jpeg = np.asarray(Image.open(vms_slide.with_suffix(".jpg")))  # the JPEG the slide is, as Pillow decodes it
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 256, 384), jpeg)
        np.testing.assert_array_equal(source.read_level(0, 13, 70, 101, 333), jpeg[13:101, 70:333])
    result = CliRunner().invoke(app, ["info", str(vms_slide), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "OpenSlide (hamamatsu)" and info["pixel_size"] == f"{VMS_MPP:g} um"
    # A folder lists the slide, not the JPEGs it is made of.
    assert list_images(vms_slide.parent) == [vms_slide]


@pytest.mark.parametrize("name, kind", [("scan.mrxs", "MIRAX"), ("scan.VMS", "Hamamatsu VMS"), ("scan.svslide", "Sakura")])
def test_without_the_extra_a_slide_is_one_line_naming_it(tmp_path, monkeypatch, name, kind):
    monkeypatch.setitem(sys.modules, "openslide", None)  # `import openslide` raises ImportError
    path = tmp_path / name
    path.write_bytes(b"[Virtual Microscope Specimen]\n")
    expected = f"{path}: a {kind} slide needs OpenSlide: pip install 'magnet-cli[openslide]'"
    with pytest.raises(InputError) as error:
        open_image(path)
    assert str(error.value) == expected
    result = CliRunner().invoke(app, ["info", str(path)], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {expected}"
