from __future__ import annotations

import gc
import json
import time

import numpy as np
import pytest
import tifffile
import tifffile.zarr

from magnet_cli.errors import InputError
from magnet_cli.io.base import Box, PixelNormalization, to_model_input
from magnet_cli.io.tiff import TiffSource

from .conftest import GEO_KEYS, GEO_PIXEL_SCALE, GEO_TIEPOINT, HEIGHT, WIDTH, pattern


def test_subifd_pyramid_levels_and_exact_regions(subifd_tiff, rgb):
    with TiffSource(subifd_tiff) as source:
        assert (source.height, source.width, source.bands, source.dtype) == (HEIGHT, WIDTH, 3, np.uint8)
        assert [(lv.height, lv.width) for lv in source.levels] == [(300, 400), (150, 200), (75, 100)]
        assert [lv.downsample_y for lv in source.levels] == [1.0, 2.0, 4.0]
        assert source.chunks == (64, 64)
        np.testing.assert_array_equal(source.read_level(0, 10, 70, 130, 261), rgb[10:130, 70:261])
        np.testing.assert_array_equal(source.read_level(1, 5, 3, 150, 200), rgb[::2, ::2][5:, 3:])
        np.testing.assert_array_equal(source.read_level(2, 0, 0, 75, 100), rgb[::4, ::4])


def test_reduced_pages_without_subifds_form_the_pyramid(pages_pyramid_tiff, rgb):
    with TiffSource(pages_pyramid_tiff) as source:
        assert [(lv.height, lv.width) for lv in source.levels] == [(300, 400), (150, 200)]
        np.testing.assert_array_equal(source.read_level(1, 100, 150, 150, 200), rgb[::2, ::2][100:, 150:])


def test_read_decodes_only_the_tiles_it_touches(subifd_tiff, monkeypatch):
    tiles: list[tuple[int, ...]] = []
    original = tifffile.zarr.ZarrTiffStore.get

    async def counting_get(self, key, prototype, byte_range=None):
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            tiles.append(_chunk_coords(key))
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(tifffile.zarr.ZarrTiffStore, "get", counting_get)
    with TiffSource(subifd_tiff) as source:
        tiles.clear()  # the open-time probe decodes tile (0, 0)
        source.read_level(0, 70, 130, 120, 190)  # inside tile row 1, tile columns 2
        assert tiles == [(1, 2, 0)]
        tiles.clear()
        source.read_level(0, 60, 60, 70, 70)  # the corner of four tiles; (0, 0) is kept from the probe
        assert sorted(tiles) == [(0, 1, 0), (1, 0, 0), (1, 1, 0)]
        tiles.clear()
        source.read_level(0, 10, 70, 60, 110)  # tiles read before (io/tile_cache.py): nothing decoded
        assert tiles == []


def _chunk_coords(key: str) -> tuple[int, ...]:
    """Chunk coordinates of a Zarr key: 'i.j.k' (format 2, tifffile < 2026.5.2) or 'c/i/j/k' (format 3)."""
    return tuple(int(part) for part in key.removeprefix("c/").replace("/", ".").split("."))


def test_compressed_strips_read_exactly(striped_tiff, rgb):
    with TiffSource(striped_tiff) as source:
        assert source.chunks == (16, WIDTH)
        assert len(source.levels) == 1
        np.testing.assert_array_equal(source.read_level(0, 7, 1, 299, 399), rgb[7:299, 1:399])


def test_uncompressed_strips_are_memory_mapped_and_exact(raw_striped_tiff, rgb):
    with TiffSource(raw_striped_tiff) as source:
        assert isinstance(source._arrays[0], np.memmap)
        region = source.read_level(0, 33, 44, 55, 66)
        assert region.flags.writeable and type(region) is np.ndarray
        np.testing.assert_array_equal(region, rgb[33:55, 44:66])


def test_planar_separate_samples_come_back_as_height_width_bands(planar_tiff, rgb):
    with TiffSource(planar_tiff) as source:
        assert source.bands == 3 and source.extra["planar"]
        region = source.read_level(0, 50, 60, 170, 333)
        assert region.shape == (120, 273, 3) and region.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(region, rgb[50:170, 60:333])


def test_grayscale_2d_uint16_has_one_band(gray16_tiff):
    expected = pattern(bands=1, dtype=np.uint16)
    with TiffSource(gray16_tiff) as source:
        assert (source.bands, source.dtype) == (1, np.uint16)
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 64, 65), expected[:64, :65])


def test_float_and_bool_samples_are_accepted(tmp_path):
    values = pattern(20, 30, bands=1, dtype=np.float32)[:, :, 0]
    tifffile.imwrite(tmp_path / "f.tif", values)
    tifffile.imwrite(tmp_path / "b.tif", values > 0.5)
    with TiffSource(tmp_path / "f.tif") as source:
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 20, 30)[:, :, 0], values)
    with TiffSource(tmp_path / "b.tif") as source:
        assert source.dtype == np.bool_
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 20, 30)[:, :, 0], values > 0.5)


def test_big_endian_bigtiff_reads_native_values(tmp_path, rgb):
    path = tmp_path / "big.tif"
    values = rgb.astype(np.uint16) * 257
    tifffile.imwrite(path, values, bigtiff=True, byteorder=">", photometric="rgb", tile=(64, 64))
    with TiffSource(path) as source:
        assert "BigTIFF" in source.format_name
        region = source.read_level(0, 100, 100, 200, 300)
        assert region.dtype == np.uint16 and region.dtype.isnative
        np.testing.assert_array_equal(region, values[100:200, 100:300])


def test_ome_tiff_channels_become_bands(ome_tiff):
    expected = pattern()
    with TiffSource(ome_tiff) as source:
        assert source.format_name == "OME-TIFF"
        assert source.bands == 3
        assert [(lv.height, lv.width) for lv in source.levels] == [(300, 400), (150, 200)]
        np.testing.assert_array_equal(source.read_level(0, 1, 2, 100, 200), expected[1:100, 2:200])
        np.testing.assert_array_equal(source.read_level(1, 0, 0, 150, 200), expected[::2, ::2])


def test_five_d_tiff_is_refused_naming_file_and_shape(tmp_path):
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((2, 2, 2, 64, 64), np.uint8))
    with pytest.raises(InputError, match=r"five.tif: 5 non-band dimensions \(axes Q,Q,Q,Y,X, shape \(2, 2, 2, 64, 64\)\)"):
        TiffSource(path)


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((2, 2, 64, 64), {"photometric": "minisblack"}),  # a plain 4-D stack: QQYX
        ((2, 2, 3, 64, 64), {"imagej": True, "metadata": {"axes": "TZCYX"}}),  # a time-lapse z-stack
    ],
)
def test_stacks_with_two_axes_besides_bands_y_and_x_are_refused(tmp_path, shape, options):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), **options)
    with pytest.raises(InputError, match=r"stack.tif: 4 non-band dimensions"):
        TiffSource(path)


def test_one_stack_axis_is_read_at_its_first_plane(tmp_path):
    planes = np.stack([pattern(64, 80, bands=1, seed=seed)[:, :, 0] for seed in range(3)])
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, planes, photometric="minisblack")
    with TiffSource(path) as source:
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 64, 80)[:, :, 0], planes[0])


def test_ome_tiff_singleton_time_and_z_axes_do_not_count(tmp_path):
    chw = np.moveaxis(pattern(64, 80), 2, 0)
    path = tmp_path / "tczyx.ome.tif"
    tifffile.imwrite(path, chw[None, :, None], ome=True, metadata={"axes": "TCZYX"}, photometric="minisblack")
    with TiffSource(path) as source:
        assert source.bands == 3
        assert source.extra["axes"] == "TCZYXS"  # the stored axes, length-1 ones included
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 64, 80), np.moveaxis(chw, 0, 2))


def test_svs_reads_the_baseline_pyramid_not_thumbnail_or_label(svs_tiff, rgb):
    with TiffSource(svs_tiff) as source:
        assert source.format_name == "SVS"
        assert [(lv.height, lv.width) for lv in source.levels] == [(300, 400), (75, 100)]
        np.testing.assert_array_equal(source.read_level(1, 0, 0, 75, 100), rgb[::4, ::4])


def test_largest_series_is_the_main_image(tmp_path, rgb):
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb[:30, :40].copy(), photometric="rgb")
        tif.write(rgb, photometric="rgb", tile=(64, 64))
    with TiffSource(path) as source:
        assert (source.height, source.width) == (HEIGHT, WIDTH)
        assert source.extra["series"] == 1


def test_geotiff_tags_are_kept_as_json(geotiff):
    with TiffSource(geotiff) as source:
        geo = source.georeference
        assert source.format_name == "GeoTIFF"
        json.dumps(geo)
        assert geo["ModelPixelScaleTag"] == GEO_PIXEL_SCALE
        assert geo["ModelTiepointTag"] == GEO_TIEPOINT
        assert geo["GeoKeyDirectoryTag"] == GEO_KEYS
        assert geo["GDAL_NODATA"] == "-9999"
        assert geo["GeoKeys"]["ProjectedCSTypeGeoKey"] == 32633


def test_plain_tiff_has_no_georeference(subifd_tiff):
    with TiffSource(subifd_tiff) as source:
        assert source.georeference is None


def test_coarse_read_uses_the_coarse_stored_level(subifd_tiff, rgb, read_level_spy):
    with TiffSource(subifd_tiff) as source:
        assert source.best_level(4.0) == 2 and source.best_level(3.9) == 1 and source.best_level(1.0) == 0
        calls = read_level_spy(source)
        out = source.read(Box(0, 0, HEIGHT, WIDTH), 75, 100)
        assert calls == [(2, 0, 0, 75, 100)]
        expected = to_model_input(rgb[::4, ::4], PixelNormalization())
        assert np.array_equal(out.numpy(), expected.numpy())


def test_truncated_tiff_is_an_input_error_naming_the_file(truncated_tiff):
    with pytest.raises(InputError, match="truncated.tif"):
        with TiffSource(truncated_tiff) as source:
            source.read_level(0, 0, 0, HEIGHT, WIDTH)


def test_truncated_header_is_an_input_error(tmp_path, subifd_tiff):
    path = tmp_path / "cut.tif"
    path.write_bytes(subifd_tiff.read_bytes()[:6])
    with pytest.raises(InputError, match="cut.tif"):
        TiffSource(path)


def test_corrupt_tile_fails_only_the_reads_that_touch_it(corrupt_tile_tiff, rgb):
    with TiffSource(corrupt_tile_tiff) as source:
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 64, 400), rgb[:64])
        with pytest.raises(InputError, match=r"corrupt.tif.*level 0"):
            source.read_level(0, 60, 60, 70, 70)


def test_empty_image_is_refused(empty_tiff):
    with pytest.raises(InputError, match=r"empty.tif: empty image"):
        TiffSource(empty_tiff)


@pytest.mark.parametrize("dtype", [np.int16, np.uint32, np.int8])
def test_unsupported_sample_types_are_refused(tmp_path, dtype):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, np.zeros((8, 8), dtype))
    with pytest.raises(InputError, match=rf"odd.tif: unsupported sample type {np.dtype(dtype)}"):
        TiffSource(path)


def test_not_a_tiff_and_missing_file_are_input_errors(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_bytes(b"hello, not a tiff at all")
    with pytest.raises(InputError, match="fake.tif"):
        TiffSource(path)
    with pytest.raises(InputError, match="nothere.tif: no such file"):
        TiffSource(tmp_path / "nothere.tif")


def test_close_is_idempotent(subifd_tiff):
    source = TiffSource(subifd_tiff)
    source.close()
    source.close()


def test_a_failed_read_leaves_nothing_running_behind(corrupt_tile_tiff, capfd):
    source = TiffSource(corrupt_tile_tiff)
    with pytest.raises(InputError):
        source.read_level(0, 0, 0, HEIGHT, WIDTH)
    source.close()
    gc.collect()
    time.sleep(0.2)
    assert capfd.readouterr().err == ""
