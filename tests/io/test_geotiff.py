"""GeoTIFF export: pixels and georeferencing tags round-trip through tifffile; tiles are streamed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from magnet_cli.classes import default_classes
from magnet_cli.errors import OutputError
from magnet_cli.io.geotiff import _tiles, geotiff_extratags, write_geotiff
from tests.io.conftest import make_labels

GEOREFERENCE = {
    "ModelPixelScaleTag": [0.5, 0.25, 0.0],
    "ModelTiepointTag": [0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0],
    "GeoKeyDirectoryTag": [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611, 3076, 0, 1, 9001],
    "GeoDoubleParamsTag": [6378137.0, 298.257223563],
    "GeoAsciiParamsTag": "WGS 84 / UTM zone 11N|",
}


def test_pixels_and_geotiff_tags_round_trip(tmp_path):
    classes = default_classes(6)
    mask = np.random.default_rng(0).integers(0, len(classes), size=(333, 517)).astype(np.uint8)
    make_labels(tmp_path / "out.zarr", mask, classes)
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", GEOREFERENCE, tile=128)
    with tifffile.TiffFile(tif) as handle:
        page = handle.pages[0]
        np.testing.assert_array_equal(page.asarray(), mask)
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (128, 128)
        assert page.dtype == np.uint8
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert not handle.is_bigtiff
        tags = page.tags
        for name in ("ModelPixelScaleTag", "ModelTiepointTag", "GeoDoubleParamsTag"):
            assert list(tags[name].value) == pytest.approx(GEOREFERENCE[name])
        assert list(tags["GeoKeyDirectoryTag"].value) == GEOREFERENCE["GeoKeyDirectoryTag"]
        assert tags["GeoAsciiParamsTag"].value == GEOREFERENCE["GeoAsciiParamsTag"]
        assert page.is_geotiff
        assert page.geotiff_tags["ProjectedCSTypeGeoKey"] == 32611


def test_uint16_labels_and_no_georeference(tmp_path):
    classes = default_classes(300)
    mask = np.random.default_rng(1).integers(0, len(classes), size=(130, 70)).astype(np.uint16)
    make_labels(tmp_path / "out.zarr", mask, classes)
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", None, tile=64)
    with tifffile.TiffFile(tif) as handle:
        page = handle.pages[0]
        np.testing.assert_array_equal(page.asarray(), mask)
        assert page.dtype == np.uint16 and not page.is_geotiff


def test_tag_names_without_the_tag_suffix_are_accepted_and_unknown_keys_ignored():
    tags = geotiff_extratags({"ModelPixelScale": (1, 2, 0), "crs": "EPSG:4326", "GDAL_NODATA": "255"})
    assert tags == [(33550, "d", 3, (1.0, 2.0, 0.0), True), (42113, "s", 0, "255", True)]


class RecordingArray:
    """A 2-D array that records the shape of every read, standing in for a zarr array."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, int]) -> None:
        self.data, self.shape, self.chunks, self.reads = data, data.shape, chunks, []

    def __getitem__(self, key):
        block = self.data[key]
        self.reads.append(block.shape)
        return block


def test_tiles_are_streamed_in_row_major_order_from_bounded_reads():
    data = np.arange(300 * 1000).reshape(300, 1000)
    array = RecordingArray(data, chunks=(200, 200))
    tiles = list(_tiles(array, 128))
    assert len(tiles) == 3 * 8
    assert max(h * w for h, w in array.reads) <= 128 * 256  # one tile row, one chunk (rounded to tiles) wide
    np.testing.assert_array_equal(tiles[0], data[:128, :128])
    np.testing.assert_array_equal(tiles[9], data[128:256, 128:256])
    np.testing.assert_array_equal(tiles[-1], data[256:, 896:])  # edge tiles stay short (tifffile pads)


def test_output_errors_and_tile_validation(tmp_path):
    classes = default_classes(2)
    make_labels(tmp_path / "out.zarr", np.zeros((40, 40), dtype=np.uint8), classes)
    with pytest.raises(OutputError):
        write_geotiff(tmp_path / "out.zarr", tmp_path / "missing" / "out.tif", None)
    with pytest.raises(ValueError):
        write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", None, tile=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
