from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from magnet_cli.errors import InputError
from magnet_cli.io.open import describe, list_images, open_image
from magnet_cli.io.openslide_source import OpenSlideSource
from magnet_cli.io.raster import RasterSource
from magnet_cli.io.tiff import TiffSource
from magnet_cli.io.zarr_source import ZarrSource

from .conftest import GEO_PIXEL_SCALE


def test_dispatch_is_by_content_not_by_name(tmp_path, subifd_tiff, png_rgb, rgb):
    tiff_named_png = tmp_path / "looks_like.png"
    shutil.copy(subifd_tiff, tiff_named_png)
    png_named_dat = tmp_path / "picture.dat"
    shutil.copy(png_rgb, png_named_dat)
    with open_image(tiff_named_png) as source:
        assert isinstance(source, TiffSource)
    with open_image(str(png_named_dat)) as source:
        assert isinstance(source, RasterSource)
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 5, 5), rgb[:5, :5])


@pytest.mark.parametrize(
    "fixture, kind",
    [
        ("subifd_tiff", TiffSource),
        ("ome_tiff", TiffSource),
        ("svs_tiff", TiffSource),
        ("zarr_v2_hwc", ZarrSource),
        ("zarr_v3_chw", ZarrSource),
        ("ome_zarr_04", ZarrSource),
        ("ome_zarr_05", ZarrSource),
        ("png_rgb", RasterSource),
        ("jpeg_rgb", RasterSource),
        ("vms_slide", OpenSlideSource),
    ],
)
def test_every_input_kind_opens_with_its_reader(request, fixture, kind):
    with open_image(request.getfixturevalue(fixture)) as source:
        assert isinstance(source, kind)
        assert source.read_level(0, 0, 0, 2, 2).shape == (2, 2, source.bands)


def test_missing_path_is_no_such_file(tmp_path):
    with pytest.raises(InputError, match=r"nope.tif: no such file"):
        open_image(tmp_path / "nope.tif")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.png", b"", "empty file"),
        ("notes.txt", b"just some text", "not a supported image"),
        ("fake.tif", b"garbage, not a tiff", "not a TIFF"),
    ],
)
def test_files_that_are_not_images_are_input_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"{name}: {message}"):
        open_image(path)


def test_folder_that_is_not_zarr_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a Zarr store"):
        open_image(tmp_path)


def test_list_images_is_sorted_flat_and_skips_hidden_and_foreign_files(tmp_path, rgb, zarr_v2_hwc):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ["b.tif", "a.PNG", "c.jpeg", ".hidden.png", "readme.txt", "d.svs"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.png").write_bytes(b"x")
    shutil.copytree(zarr_v2_hwc, folder / "e.zarr")
    (folder / "not_a_store.zarr").mkdir()
    assert [p.name for p in list_images(folder)] == ["a.PNG", "b.tif", "c.jpeg", "d.svs", "e.zarr"]
    with pytest.raises(InputError, match="no such folder"):
        list_images(tmp_path / "missing")


def test_describe_is_json_ready(subifd_tiff):
    with open_image(subifd_tiff) as source:
        info = describe(source)
    json.dumps(info)
    assert info == {
        "path": str(subifd_tiff),
        "format": "TIFF",
        "height": 300,
        "width": 400,
        "bands": 3,
        "dtype": "uint8",
        "levels": [[300, 400, 1.0], [150, 200, 2.0], [75, 100, 4.0]],
        "chunks": [64, 64],
        "georeference": None,
        "warnings": [],
    }


def test_describe_carries_georeference(geotiff):
    with open_image(geotiff) as source:
        info = describe(source)
    assert json.loads(json.dumps(info))["georeference"]["ModelPixelScaleTag"] == GEO_PIXEL_SCALE


def test_describe_names_the_crs_and_gives_pixel_size_and_bounds(geotiff):
    """What `magnet info` shows a GIS user: the CRS by EPSG code and name, not raw GeoKeys."""
    pytest.importorskip("rasterio")  # names the code (the gis extra); without it, "EPSG:32613" alone
    from .conftest import GEO_TIEPOINT

    with open_image(geotiff) as source:
        info = describe(source)
    assert info["crs"] == "WGS 84 / UTM zone 33N (EPSG:32633)"
    assert info["pixel_size"] == f"{GEO_PIXEL_SCALE[0]:g} m"  # UTM: metres
    left, top = GEO_TIEPOINT[3], GEO_TIEPOINT[4]
    assert info["bounds"] == {"left": left, "top": top, "right": left + 400 * GEO_PIXEL_SCALE[0],
                              "bottom": top - 300 * GEO_PIXEL_SCALE[1]}
