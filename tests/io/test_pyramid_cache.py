from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magnet_cli.errors import InputError
from magnet_cli.io.array import ArraySource
from magnet_cli.io.base import Box
from magnet_cli.io.pyramid_cache import BLOCK_SIDE, ensure_pyramid, pyramid_shapes
from magnet_cli.io.tiff import TiffSource

from .conftest import pattern


def block_means(image: np.ndarray, factor: int) -> np.ndarray:
    """Reference: mean of each factor x factor block, edge blocks over the pixels that exist."""
    height, width, bands = image.shape
    h, w = -(-height // factor), -(-width // factor)
    padded = np.zeros((h * factor, w * factor, bands))
    padded[:height, :width] = image
    counts = np.zeros((h * factor, w * factor, 1))
    counts[:height, :width] = 1
    sums = padded.reshape(h, factor, w, factor, bands).sum(axis=(1, 3))
    return sums / counts.reshape(h, factor, w, factor, 1).sum(axis=(1, 3))


def test_pyramid_shapes_use_the_ceiling_and_stop_at_min_size():
    assert pyramid_shapes(1000, 2051, 256) == [(500, 1026), (250, 513), (125, 257), (63, 129)]
    assert pyramid_shapes(5, 3, 1) == [(3, 2), (2, 1), (1, 1)]


def test_deep_enough_stored_pyramid_or_small_image_is_returned_unchanged(subifd_tiff):
    with TiffSource(subifd_tiff) as source:
        coarsest = source.levels[-1]
        assert ensure_pyramid(source, min_size=max(coarsest.height, coarsest.width)) is source
    small = ArraySource(pattern(64, 64))
    assert ensure_pyramid(small, min_size=32) is small


def test_shallow_stored_pyramid_is_extended_from_its_coarsest_level(tmp_path, read_level_spy):
    image = pattern(256, 192)
    stored = image[::2, ::2].copy()  # a stored level 1 that is not a block mean: proves we build from it
    original = ArraySource(image, pyramid=[stored])
    calls = read_level_spy(original)
    with ensure_pyramid(original, tmp_path, min_size=32) as source:
        assert [(lv.height, lv.width, lv.downsample_y) for lv in source.levels] == [
            (256, 192, 1.0), (128, 96, 2.0), (64, 48, 4.0), (32, 24, 8.0)]
        assert {call[0] for call in calls} == {1}  # built from the stored level 1 only
        np.testing.assert_allclose(source.read_level(2, 0, 0, 64, 48), np.rint(block_means(stored, 2)))
        np.testing.assert_array_equal(source.read_level(1, 0, 0, 128, 96), stored)


def test_levels_are_exact_block_means_with_power_of_two_downsamples(tmp_path):
    image = pattern(1037, 2051, bands=2, dtype=np.uint16, seed=3)
    with ensure_pyramid(ArraySource(image), tmp_path, min_size=100) as source:
        assert [(lv.height, lv.width) for lv in source.levels[1:]] == pyramid_shapes(1037, 2051, 100)
        for k, level in enumerate(source.levels[1:], start=1):
            assert (level.downsample_y, level.downsample_x) == (2.0**k, 2.0**k)
            got = source.read_level(k, 0, 0, level.height, level.width)
            assert got.dtype == np.uint16
            np.testing.assert_array_equal(got, np.rint(block_means(image, 2**k)).astype(np.uint16))


def test_float_and_bool_levels(tmp_path):
    values = pattern(300, 77, bands=1, dtype=np.float32)
    with ensure_pyramid(ArraySource(values), tmp_path, min_size=20) as source:
        np.testing.assert_allclose(source.read_level(2, 0, 0, 75, 20), block_means(values, 4), rtol=1e-6)
    mask = values > 0.5
    with ensure_pyramid(ArraySource(mask), tmp_path, min_size=20) as source:
        coarse = source.read_level(1, 0, 0, 150, 39)
        assert coarse.dtype == np.float32  # fractions of True in [0, 1]
        np.testing.assert_allclose(coarse, block_means(mask, 2), rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    min_size=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
def test_every_level_matches_the_reference_for_any_shape(tmp_path_factory, height, width, min_size, seed):
    image = pattern(height, width, bands=1, seed=seed)
    source = ensure_pyramid(ArraySource(image), tmp_path_factory.mktemp("p"), min_size=min_size)
    with source:
        for k, level in enumerate(source.levels[1:], start=1):
            got = source.read_level(k, 0, 0, level.height, level.width)
            np.testing.assert_array_equal(got, np.rint(block_means(image, 2**k)).astype(np.uint8))


def test_level_0_is_read_once_in_bounded_blocks(tmp_path, read_level_spy):
    for height, width in [(1500, 1300), (3100, 2600)]:
        original = ArraySource(pattern(height, width, bands=1))
        calls = read_level_spy(original)
        with ensure_pyramid(original, tmp_path, min_size=64):
            pass
        assert all(level == 0 for level, *_ in calls)
        assert sum((y1 - y0) * (x1 - x0) for _, y0, x0, y1, x1 in calls) == height * width
        assert max((y1 - y0) * (x1 - x0) for _, y0, x0, y1, x1 in calls) <= BLOCK_SIDE * BLOCK_SIDE


def test_striped_source_is_read_in_full_width_bands_of_whole_strips(striped_tiff, rgb, read_level_spy, tmp_path):
    original = TiffSource(striped_tiff)
    calls = read_level_spy(original)
    with ensure_pyramid(original, tmp_path, min_size=16) as source:
        assert all(x0 == 0 and x1 == 400 and y0 % 16 == 0 for _, y0, x0, y1, x1 in calls)
        np.testing.assert_array_equal(source.read_level(1, 0, 0, 150, 200), np.rint(block_means(rgb, 2)))


def test_coarse_reads_use_the_temporary_levels_and_level_0_stays_original(tmp_path, read_level_spy):
    image = pattern(600, 896)
    with ensure_pyramid(ArraySource(image), tmp_path, min_size=100) as source:
        np.testing.assert_array_equal(source.read_level(0, 5, 6, 50, 60), image[5:50, 6:60])
        calls = read_level_spy(source)
        out = source.read(Box(0, 0, 600, 896), 75, 112)
        assert out.shape == (3, 75, 112)
        assert calls[0][0] == 3 == source.best_level(8.0)


def test_close_removes_the_temporary_folder_and_closes_the_original(tmp_path):
    closed = []
    original = ArraySource(pattern(600, 600, bands=1))
    original.close = lambda: closed.append(True)
    source = ensure_pyramid(original, tmp_path, min_size=100)
    assert list(tmp_path.iterdir())
    source.close()
    source.close()
    assert not list(tmp_path.iterdir())
    assert closed


def test_failure_while_building_cleans_up_and_closes_the_original(tmp_path):
    closed = []
    original = ArraySource(pattern(600, 600, bands=1), name="broken.tif")
    original.close = lambda: closed.append(True)

    def broken(level, y0, x0, y1, x1):
        raise InputError("broken.tif: cannot decode level 0")

    original.read_level = broken
    with pytest.raises(InputError, match="broken.tif"):
        ensure_pyramid(original, tmp_path, min_size=100)
    assert not list(tmp_path.iterdir())
    assert closed


@pytest.mark.parametrize("failure", ["disk full", "interrupt"])
def test_disk_full_or_an_interrupt_while_building_leaves_nothing_in_tmpdir(tmp_path, monkeypatch, failure):
    import errno

    import zarr

    from magnet_cli.errors import OutputError

    def write(self, *args, **kwargs):
        if failure == "interrupt":
            raise KeyboardInterrupt  # what SIGTERM and SIGHUP become in the CLI
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", write)
    expected = KeyboardInterrupt if failure == "interrupt" else OutputError
    with pytest.raises(expected) as error:
        ensure_pyramid(ArraySource(pattern(600, 600, bands=1)), tmp_path, min_size=100)
    if failure == "disk full":  # one line naming the folder and what to do
        assert str(tmp_path) in str(error.value) and "No space left on device" in str(error.value)
        assert "TMPDIR" in str(error.value)
    assert not list(tmp_path.iterdir())


def test_a_kept_pyramid_is_built_once_and_reused(tmp_path, monkeypatch):
    from magnet_cli.io import pyramid_cache

    image = np.random.default_rng(1).integers(0, 256, (700, 500, 3), dtype=np.uint8)
    builds = []
    original = pyramid_cache.build_levels
    monkeypatch.setattr(pyramid_cache, "build_levels", lambda *a, **k: builds.append(1) or original(*a, **k))
    folder = tmp_path / "pyramid"
    reads = []
    for _ in range(2):  # a run, then its resumption
        with ensure_pyramid(ArraySource(image), min_size=64, keep_in=folder) as source:
            reads.append(source.read_level(len(source.levels) - 1, 0, 0, 8, 8))
    assert builds == [1]
    assert np.array_equal(reads[0], reads[1])
    assert (folder / "complete").is_file()  # closing the source keeps it (the partial store removes it)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyramid", "pyramid.lock"]


def test_an_interrupted_kept_pyramid_build_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    from magnet_cli.io import pyramid_cache

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyramid_cache, "build_levels", interrupted)
    image = np.zeros((700, 500, 3), np.uint8)
    with pytest.raises(KeyboardInterrupt):
        ensure_pyramid(ArraySource(image), min_size=64, keep_in=tmp_path / "pyramid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyramid.lock"]
