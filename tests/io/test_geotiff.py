"""GeoTIFF export: a Cloud Optimized GeoTIFF that rasterio and rio-cogeo accept, with the input's CRS and
transform, the class colour map and overviews; without rasterio, a tiled GeoTIFF whose tags round-trip
through tifffile. Tiles are streamed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from magnet_cli.classes import ClassInfo, default_classes
from magnet_cli.errors import OutputError
from magnet_cli.io.geotiff import (
    _overview_levels,
    _tiles,
    geotiff_extratags,
    has_georeferencing,
    is_magnet_geotiff,
    write_geotiff,
)
from tests.io.conftest import make_labels

rasterio = pytest.importorskip("rasterio")
cogeo = pytest.importorskip("rio_cogeo.cogeo")

GEOREFERENCE = {
    "ModelPixelScaleTag": [0.5, 0.25, 0.0],
    "ModelTiepointTag": [0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0],
    "GeoKeyDirectoryTag": [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32611, 3076, 0, 1, 9001],
    "GeoDoubleParamsTag": [6378137.0, 298.257223563],
    "GeoAsciiParamsTag": "WGS 84 / UTM zone 11N|",
}


def test_cog_is_valid_and_keeps_crs_transform_colours_overviews_and_labels(tmp_path):
    classes = default_classes(6)
    mask = np.random.default_rng(0).integers(0, len(classes), size=(1100, 900)).astype(np.uint8)
    make_labels(tmp_path / "out.zarr", mask, classes)  # levels 1100, 550, 275, 138, 69
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", GEOREFERENCE, tile=256, classes=classes)
    valid, errors, _ = cogeo.cog_validate(tif, strict=True)
    assert valid and errors == []
    with rasterio.open(tif) as cog:
        assert cog.crs.to_epsg() == 32611
        assert tuple(cog.transform)[:6] == (0.5, 0.0, 440720.0, 0.0, -0.25, 3751320.0)
        assert cog.block_shapes == [(256, 256)] and cog.dtypes == ("uint8",)
        assert cog.nodata is None  # segment output has no no-data value
        assert cog.overviews(1) == [2, 4, 8]  # down to one 256-px tile
        np.testing.assert_array_equal(cog.read(1), mask)
        # The overviews are the label image's own levels (every 2^k-th pixel), not a resampling.
        np.testing.assert_array_equal(cog.read(1, out_shape=(550, 450)), mask[::2, ::2])
        np.testing.assert_array_equal(cog.read(1, out_shape=(138, 113)), mask[::8, ::8])
        table = cog.colormap(1)
        assert [table[i][:3] for i in range(len(classes))] == [c.color for c in classes]
    assert is_magnet_geotiff(tif)  # GDAL kept magnet-cli's description: --overwrite may replace it


def test_cog_carries_the_no_data_value_when_there_is_one(tmp_path):
    classes = default_classes(3)
    mask = np.random.default_rng(4).integers(0, 3, size=(300, 200)).astype(np.uint8)
    make_labels(tmp_path / "out.zarr", mask, classes)
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", GEOREFERENCE, tile=128, classes=classes, nodata=0)
    assert cogeo.cog_validate(tif)[0]
    with rasterio.open(tif) as cog:
        assert cog.nodata == 0


def test_input_no_data_and_gdal_metadata_are_not_the_labels_and_are_not_copied(tmp_path):
    classes = default_classes(3)
    make_labels(tmp_path / "out.zarr", np.zeros((64, 64), dtype=np.uint8), classes)
    georeference = {**GEOREFERENCE, "GDAL_NODATA": "0", "GDAL_METADATA": "<GDALMetadata><Item name='SCALE'>2</Item></GDALMetadata>"}
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", georeference, tile=64, classes=classes)
    with rasterio.open(tif) as cog:
        assert cog.nodata is None and cog.scales == (1.0,)
        assert (cog.read(1) == 0).all() and cog.read_masks(1).all()  # class 0 is data


def test_uint16_labels_get_a_colour_map_too(tmp_path):
    classes = [ClassInfo(f"c{i}", ((i * 7) % 256, (i * 11) % 256, (i * 13) % 256)) for i in range(300)]
    mask = np.random.default_rng(5).integers(0, 300, size=(200, 260)).astype(np.uint16)
    make_labels(tmp_path / "out.zarr", mask, classes)
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", GEOREFERENCE, tile=64, classes=classes)
    assert cogeo.cog_validate(tif)[0]
    with rasterio.open(tif) as cog:
        np.testing.assert_array_equal(cog.read(1), mask)
        assert cog.colormap(1)[299][:3] == classes[299].color


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_without_georeferencing_the_cog_is_in_pixel_space(tmp_path):
    classes = default_classes(2)
    make_labels(tmp_path / "out.zarr", np.ones((80, 120), dtype=np.uint8), classes)
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", None, tile=64, classes=classes)
    with rasterio.open(tif) as cog:
        assert cog.crs is None and cog.transform.is_identity
    assert not has_georeferencing(None) and not has_georeferencing({"GDAL_NODATA": "0"})
    assert has_georeferencing(GEOREFERENCE) and has_georeferencing({"ModelTransformation": [1] * 16})


def test_the_overviews_reuse_stored_levels_and_stop_at_one_tile():
    level0 = np.arange(1000 * 600).reshape(1000, 600)
    stored = [level0, level0[::2, ::2], level0[::4, ::4]]  # 1000, 500, 250
    chosen = _overview_levels(stored, 128)
    assert [a.shape for a in chosen] == [(1000, 600), (500, 300), (250, 150), (125, 75)]
    assert chosen[1] is stored[1] and chosen[2] is stored[2]  # read from the label image, not recomputed
    np.testing.assert_array_equal(chosen[3], level0[::8, ::8])
    foreign = [level0, level0[::4, ::4]]  # not a halving pyramid: only level 0 is kept, then halved
    assert [a.shape for a in _overview_levels(foreign, 512)] == [(1000, 600), (500, 300)]


def test_pixels_and_geotiff_tags_round_trip_in_the_tiled_geotiff_without_rasterio(tmp_path):
    classes = default_classes(6)
    mask = np.random.default_rng(0).integers(0, len(classes), size=(333, 517)).astype(np.uint8)
    make_labels(tmp_path / "out.zarr", mask, classes)
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", GEOREFERENCE, tile=128, classes=classes, cog=False)
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
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert [p.shape for p in handle.pages] == [(333, 517), (167, 259), (84, 130), (42, 65)]  # internal overviews
        assert handle.pages[1].subfiletype == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out.zarr"]


def test_uint16_labels_and_no_georeference(tmp_path):
    classes = default_classes(300)
    mask = np.random.default_rng(1).integers(0, len(classes), size=(130, 70)).astype(np.uint16)
    make_labels(tmp_path / "out.zarr", mask, classes)
    tif = write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", None, tile=64, cog=False)
    with tifffile.TiffFile(tif) as handle:
        page = handle.pages[0]
        np.testing.assert_array_equal(page.asarray(), mask)
        assert page.dtype == np.uint16 and not page.is_geotiff
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK  # no classes given: no colour map


def test_tag_names_without_the_tag_suffix_are_accepted_and_unknown_keys_ignored():
    tags = geotiff_extratags({"ModelPixelScale": (1, 2, 0), "crs": "EPSG:4326", "GDAL_NODATA": "255"})
    assert tags == [(33550, "d", 3, (1.0, 2.0, 0.0), True)]  # the input's no-data is not the labels'
    assert geotiff_extratags(None, nodata=7) == [(42113, "s", 0, "7", True)]


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


def test_a_failed_conversion_is_an_output_error_and_leaves_nothing(tmp_path, monkeypatch):
    import rasterio.shutil

    from rasterio.errors import RasterioIOError

    def full_disk(*args, **kwargs):
        raise RasterioIOError("No space left on device")

    monkeypatch.setattr(rasterio.shutil, "copy", full_disk)
    make_labels(tmp_path / "out.zarr", np.zeros((40, 40), dtype=np.uint8), default_classes(2))
    with pytest.raises(OutputError, match="out.tif.*No space left"):
        write_geotiff(tmp_path / "out.zarr", tmp_path / "out.tif", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
