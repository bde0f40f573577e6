from __future__ import annotations

import numpy as np
import pytest
import zarr

from magnet_cli.errors import InputError
from magnet_cli.io.base import Box
from magnet_cli.io.zarr_source import ZarrSource, region_index, to_yxc

from .conftest import HEIGHT, WIDTH, pattern, write_ome_zarr, write_tczyx_05


def test_region_index_and_to_yxc_reorder_any_axis_layout():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # (t, c, y, x)
    index = region_index("_CYX", data.shape, 1, 2, 3, 5)
    np.testing.assert_array_equal(to_yxc(data[index], "_CYX"), np.moveaxis(data[0, :, 1:3, 2:5], 0, 2))
    with pytest.raises(ValueError):
        region_index("YX", (4, 5), 0, 0, 5, 5)


def test_zarr_v2_height_width_channels(zarr_v2_hwc, rgb):
    with ZarrSource(zarr_v2_hwc) as source:
        assert (source.height, source.width, source.bands, source.dtype) == (HEIGHT, WIDTH, 3, np.uint8)
        assert source.format_name == "Zarr v2" and source.chunks == (64, 64)
        np.testing.assert_array_equal(source.read_level(0, 3, 5, 200, 390), rgb[3:200, 5:390])


def test_zarr_v3_channels_first_is_inferred_from_the_small_axis(zarr_v3_chw):
    expected = pattern(dtype=np.uint16)
    with ZarrSource(zarr_v3_chw) as source:
        assert (source.bands, source.dtype, source.format_name) == (3, np.uint16, "Zarr v3")
        assert source.extra["axes"] == "CYX"
        np.testing.assert_array_equal(source.read_level(0, 100, 0, 300, 77), expected[100:300, :77])


def test_dimension_names_decide_the_band_axis(tmp_path):
    data = np.arange(6 * 20 * 30, dtype=np.uint16).reshape(6, 20, 30)  # six bands: too many to infer
    array = zarr.create_array(
        str(tmp_path / "named.zarr"), shape=data.shape, dtype=data.dtype, dimension_names=["band", "y", "x"]
    )
    array[:] = data
    with ZarrSource(tmp_path / "named.zarr") as source:
        assert source.bands == 6
        np.testing.assert_array_equal(source.read_level(0, 2, 3, 12, 13), np.moveaxis(data[:, 2:12, 3:13], 0, 2))


def test_2d_array_is_one_band(tmp_path):
    data = pattern(40, 50, bands=1, dtype=np.float32)[:, :, 0].astype(np.float64)
    array = zarr.create_array(str(tmp_path / "gray.zarr"), shape=data.shape, dtype=data.dtype, chunks=(16, 16))
    array[:] = data
    with ZarrSource(tmp_path / "gray.zarr") as source:
        assert (source.bands, source.dtype) == (1, np.float64)
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 40, 50)[:, :, 0], data)


def test_ambiguous_shape_is_an_input_error(tmp_path):
    zarr.create_array(str(tmp_path / "cube.zarr"), shape=(10, 20, 30), dtype="uint8")
    with pytest.raises(InputError, match=r"cube.zarr: cannot tell rows, columns and bands apart"):
        ZarrSource(tmp_path / "cube.zarr")


def test_ome_zarr_04_levels_come_from_scale_transforms(ome_zarr_04, rgb):
    with ZarrSource(ome_zarr_04) as source:
        assert source.format_name == "OME-Zarr 0.4"
        assert [(lv.height, lv.width, lv.downsample_y, lv.downsample_x) for lv in source.levels] == [
            (300, 400, 1.0, 1.0),
            (150, 200, 2.0, 2.0),
            (75, 100, 4.0, 4.0),
        ]
        np.testing.assert_array_equal(source.read_level(0, 17, 19, 251, 333), rgb[17:251, 19:333])
        np.testing.assert_array_equal(source.read_level(2, 0, 0, 75, 100), rgb[::4, ::4])


def test_ome_zarr_05_takes_the_first_time_point(ome_zarr_05):
    expected = pattern(100, 120, dtype=np.float32, seed=0)  # t = 0
    with ZarrSource(ome_zarr_05) as source:
        assert source.format_name == "OME-Zarr 0.5"
        assert (source.height, source.width, source.bands, source.dtype) == (100, 120, 3, np.float32)
        assert [(lv.downsample_y, lv.downsample_x) for lv in source.levels] == [(1.0, 1.0), (2.0, 2.0)]
        np.testing.assert_array_equal(source.read_level(0, 10, 20, 90, 110), expected[10:90, 20:110])
        np.testing.assert_array_equal(source.read_level(1, 0, 0, 50, 60), expected[::2, ::2])


def test_ome_zarr_z_stack_is_read_at_its_first_plane(tmp_path):
    with ZarrSource(write_tczyx_05(tmp_path / "z.ome.zarr", times=1, planes=3)) as source:
        expected = pattern(100, 120, dtype=np.float32, seed=0)  # z = 0
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 100, 120), expected)


def test_ome_zarr_with_two_stack_axes_is_refused_naming_axes_and_shape(tmp_path):
    path = write_tczyx_05(tmp_path / "tz.ome.zarr", times=2, planes=2)
    with pytest.raises(InputError, match=r"tz.ome.zarr: 4 non-band dimensions \(axes t,c,z,y,x, shape \(2, 3, 2, 100, 120\)\)"):
        ZarrSource(path)


@pytest.mark.parametrize(
    ("names", "shape"),
    [(["a", "b", "z", "y", "x"], (2, 2, 2, 64, 64)), (["t", "z", "y", "x"], (2, 3, 64, 64))],
)
def test_named_array_with_more_than_three_non_band_dimensions_is_refused(tmp_path, names, shape):
    zarr.create_array(str(tmp_path / "stack.zarr"), shape=shape, dtype="uint8", dimension_names=names)
    with pytest.raises(InputError, match=rf"stack.zarr: {len(shape)} non-band dimensions .*shape \({shape[0]}, "):
        ZarrSource(tmp_path / "stack.zarr")


def test_unnamed_five_d_array_is_refused(tmp_path):
    zarr.create_array(str(tmp_path / "five.zarr"), shape=(2, 2, 2, 64, 64), dtype="uint8")
    with pytest.raises(InputError, match=r"five.zarr: .*shape \(2, 2, 2, 64, 64\)"):
        ZarrSource(tmp_path / "five.zarr")


def test_singleton_axes_do_not_count_and_named_bands_are_not_stack_axes(tmp_path):
    data = pattern(40, 50, bands=3)
    array = zarr.create_array(
        str(tmp_path / "tczyx.zarr"), shape=(1, 3, 1, 40, 50), dtype="uint8", dimension_names=list("tczyx")
    )
    array[:] = np.moveaxis(data, 2, 0)[None, :, None]
    with ZarrSource(tmp_path / "tczyx.zarr") as source:
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 40, 50), data)


def test_two_band_axes_are_refused(tmp_path):
    zarr.create_array(str(tmp_path / "cc.zarr"), shape=(2, 3, 64, 64), dtype="uint8", dimension_names=["c", "band", "y", "x"])
    with pytest.raises(InputError, match=r"cc.zarr: more than one band axis"):
        ZarrSource(tmp_path / "cc.zarr")


def test_ome_zarr_coarse_read_uses_the_coarse_level(ome_zarr_04, read_level_spy):
    with ZarrSource(ome_zarr_04) as source:
        calls = read_level_spy(source)
        out = source.read(Box(0, 0, 200, 200), 50, 50)
        assert out.shape == (3, 50, 50)
        assert calls == [(2, 0, 0, 50, 50)]


def test_bioformats2raw_layout_opens_the_image_in_group_0(tmp_path, rgb):
    root = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}, {"name": "c", "type": "channel"}]
    write_ome_zarr(tmp_path / "b2r.zarr" / "0", [rgb], axes, [[1.0, 1.0, 1.0]], "0.4")
    with ZarrSource(tmp_path / "b2r.zarr") as source:
        assert source.extra["image"] == "0"
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 10, 10), rgb[:10, :10])


def test_group_without_multiscales_is_an_input_error_listing_members(tmp_path):
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("pixels", shape=(4, 4), dtype="uint8")
    with pytest.raises(InputError, match=r"plain.zarr: .*multiscales.*pixels"):
        ZarrSource(tmp_path / "plain.zarr")


def test_corrupt_chunk_is_an_input_error(zarr_v2_hwc):
    (zarr_v2_hwc / "1.1.0").write_bytes(b"definitely not compressed data")
    with ZarrSource(zarr_v2_hwc) as source:
        source.read_level(0, 0, 0, 64, 64)
        with pytest.raises(InputError, match=r"v2.zarr: cannot read level 0"):
            source.read_level(0, 64, 64, 70, 70)


def test_unsupported_dtype_and_empty_arrays_are_refused(tmp_path):
    zarr.create_array(str(tmp_path / "i16.zarr"), shape=(8, 8), dtype="int16")
    with pytest.raises(InputError, match=r"i16.zarr: unsupported sample type int16"):
        ZarrSource(tmp_path / "i16.zarr")
    zarr.create_array(str(tmp_path / "empty.zarr"), shape=(0, 8), dtype="uint8")
    with pytest.raises(InputError, match=r"empty.zarr: empty image"):
        ZarrSource(tmp_path / "empty.zarr")


def test_not_a_zarr_folder_is_an_input_error(tmp_path):
    (tmp_path / "folder.zarr").mkdir()
    with pytest.raises(InputError, match=r"folder.zarr: not a Zarr store"):
        ZarrSource(tmp_path / "folder.zarr")
