"""PNG previews: size, colours, blending, and reading from a coarse pyramid level."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from magnet_cli.classes import default_classes
from magnet_cli.errors import InputError, OutputError
from magnet_cli.io.labels import LabelWriter
from magnet_cli.io.preview import preview_shape, read_labels, write_preview

CLASSES = default_classes(4)
PALETTE = np.array([c.color for c in CLASSES], dtype=np.uint8)


def make_labels(path, mask: np.ndarray, min_level_size: int = 64) -> None:
    height, width = mask.shape
    with LabelWriter(path, height, width, CLASSES, chunk_size=128, min_level_size=min_level_size) as writer:
        writer.write(0, 0, mask)


def read_png(path) -> np.ndarray:
    return imagecodecs.png_decode(path.read_bytes())


def test_preview_shape_scales_the_long_side_to_max_size_and_never_up():
    assert preview_shape(300, 500, 128) == (77, 128)
    assert preview_shape(500, 300, 128) == (128, 77)
    assert preview_shape(300, 500, 1024) == (300, 500)


def test_small_image_preview_is_the_class_colours_at_full_size(tmp_path):
    mask = np.random.default_rng(0).integers(0, len(CLASSES), size=(90, 130))
    make_labels(tmp_path / "out.zarr", mask)
    png = write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES)
    image = read_png(png)
    assert image.shape == (90, 130, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, PALETTE[mask])


def test_preview_reads_the_coarsest_level_that_is_large_enough(tmp_path):
    mask = np.random.default_rng(1).integers(0, len(CLASSES), size=(512, 512))
    make_labels(tmp_path / "out.zarr", mask)  # levels 512, 256, 128, 64
    image = read_png(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES, max_size=128))
    assert image.shape == (128, 128, 3)
    np.testing.assert_array_equal(image, PALETTE[mask[::4, ::4]])  # exactly level 2


def test_preview_of_a_non_square_image_has_the_expected_size_and_colours(tmp_path):
    mask = np.repeat(np.repeat(np.array([[0, 1, 2, 3, 0], [3, 2, 1, 0, 1], [2, 3, 0, 1, 2]]), 100, 0), 100, 1)
    make_labels(tmp_path / "out.zarr", mask)  # 300 x 500, blocks of 100 x 100
    image = read_png(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES, max_size=128))
    assert image.shape == (77, 128, 3)
    scale = 128 / 500
    for by in range(3):
        for bx in range(5):
            y, x = int((by * 100 + 50) * scale), int((bx * 100 + 50) * scale)  # block centres
            np.testing.assert_array_equal(image[y, x], PALETTE[mask[by * 100, bx * 100]])


def test_preview_blends_the_colours_over_a_resized_thumbnail(tmp_path):
    mask = np.random.default_rng(2).integers(0, len(CLASSES), size=(100, 160))
    make_labels(tmp_path / "out.zarr", mask)
    thumbnail = np.full((25, 40, 3), 100, dtype=np.uint8)  # any size: resized to the preview
    png = write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES, thumbnail=thumbnail, alpha=0.25)
    image = read_png(png)
    assert image.shape == (100, 160, 3)
    expected = np.rint(0.75 * 100 + 0.25 * PALETTE[mask].astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)


def test_preview_replaces_an_old_png_and_reports_bad_paths(tmp_path):
    mask = np.zeros((40, 40), dtype=np.uint8)
    make_labels(tmp_path / "out.zarr", mask)
    png = tmp_path / "preview.png"
    png.write_bytes(b"old")
    write_preview(tmp_path / "out.zarr", png, CLASSES)
    assert read_png(png).shape == (40, 40, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr", "preview.png"]
    with pytest.raises(OutputError):
        write_preview(tmp_path / "out.zarr", tmp_path / "missing" / "preview.png", CLASSES)
    with pytest.raises(InputError):
        write_preview(tmp_path / "nothing.zarr", tmp_path / "p.png", CLASSES)


def test_read_labels_is_available_next_to_the_preview(tmp_path):
    mask = np.random.default_rng(3).integers(0, len(CLASSES), size=(200, 150))
    make_labels(tmp_path / "out.zarr", mask)
    np.testing.assert_array_equal(read_labels(tmp_path / "out.zarr"), mask)
    region = read_labels(tmp_path / "out.zarr", level=1, region=(5, 6, 50, 70))
    np.testing.assert_array_equal(region, mask[::2, ::2][5:50, 6:70])
