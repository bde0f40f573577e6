"""PNG previews: size, colours, blending, reading from a coarse pyramid level, the legend below the image,
and class colours told apart from each other and from the image under them."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from skimage.color import deltaE_ciede2000, rgb2lab

from magnet_cli.classes import PALETTE as CLASS_PALETTE
from magnet_cli.classes import ClassInfo, default_classes
from magnet_cli.errors import InputError, OutputError
from magnet_cli.io.labels import LabelWriter
from magnet_cli.io.preview import MIN_DELTA_E, SWATCH, preview_colors, preview_shape, read_labels, write_preview

CLASSES = default_classes(4)
PALETTE = np.array([c.color for c in CLASSES], dtype=np.uint8)


def make_labels(path, mask: np.ndarray, min_level_size: int = 64, classes=CLASSES) -> None:
    height, width = mask.shape
    with LabelWriter(path, height, width, classes, chunk_size=128, min_level_size=min_level_size) as writer:
        writer.write(0, 0, mask)


def read_png(path) -> np.ndarray:
    return imagecodecs.png_decode(path.read_bytes())


def read_preview(path, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The image part (top left) and the legend strip (below it) of a preview PNG."""
    png = read_png(path)
    assert png.shape[0] > height and png.shape[1] >= width and png.shape[2] == 3
    return png[:height, :width], png[height:]


def has_swatch(strip: np.ndarray, color) -> bool:
    """Whether the legend holds a solid (SWATCH - 2)^2 block of exactly `color` (a swatch's inside)."""
    side = SWATCH - 2
    solid = (strip == np.asarray(color, dtype=np.uint8)).all(axis=-1).astype(np.int64)
    sums = np.pad(solid.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    blocks = sums[side:, side:] - sums[:-side, side:] - sums[side:, :-side] + sums[:-side, :-side]
    return bool((blocks == side * side).any())


def delta_e(a, b) -> float:
    lab = rgb2lab(np.array([a, b], dtype=np.float64)[None] / 255.0)[0]
    return float(deltaE_ciede2000(lab[:1], lab[1:])[0])


def test_preview_shape_scales_the_long_side_to_max_size_and_never_up():
    assert preview_shape(300, 500, 128) == (77, 128)
    assert preview_shape(500, 300, 128) == (128, 77)
    assert preview_shape(300, 500, 1024) == (300, 500)


def test_small_image_preview_is_the_class_colours_at_full_size(tmp_path):
    mask = np.random.default_rng(0).integers(0, len(CLASSES), size=(90, 130))
    make_labels(tmp_path / "out.zarr", mask)
    png = write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES)
    image, _ = read_preview(png, 90, 130)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, PALETTE[mask])
    assert read_png(write_preview(tmp_path / "out.zarr", tmp_path / "bare.png", CLASSES, legend=False)).shape == (90, 130, 3)


def test_preview_reads_the_coarsest_level_that_is_large_enough(tmp_path):
    mask = np.random.default_rng(1).integers(0, len(CLASSES), size=(512, 512))
    make_labels(tmp_path / "out.zarr", mask)  # levels 512, 256, 128, 64
    image, _ = read_preview(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES, max_size=128), 128, 128)
    np.testing.assert_array_equal(image, PALETTE[mask[::4, ::4]])  # exactly level 2


def test_preview_of_a_non_square_image_has_the_expected_size_and_colours(tmp_path):
    mask = np.repeat(np.repeat(np.array([[0, 1, 2, 3, 0], [3, 2, 1, 0, 1], [2, 3, 0, 1, 2]]), 100, 0), 100, 1)
    make_labels(tmp_path / "out.zarr", mask)  # 300 x 500, blocks of 100 x 100
    image = read_png(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES, max_size=128, legend=False))
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
    image, _ = read_preview(png, 100, 160)
    expected = np.rint(0.75 * 100 + 0.25 * PALETTE[mask].astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)


def test_preview_replaces_an_old_png_and_reports_bad_paths(tmp_path):
    mask = np.zeros((40, 40), dtype=np.uint8)
    make_labels(tmp_path / "out.zarr", mask)
    png = tmp_path / "preview.png"
    png.write_bytes(b"old")
    write_preview(tmp_path / "out.zarr", png, CLASSES)
    read_preview(png, 40, 40)
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


def test_the_legend_shows_each_class_in_the_image_with_its_colour(tmp_path):
    mask = np.zeros((60, 90), dtype=np.uint8)
    mask[:, 30:] = 2
    mask[40:, 60:] = 3  # classes 0, 2, 3 shown; class 1 not
    make_labels(tmp_path / "out.zarr", mask)
    image, strip = read_preview(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", CLASSES), 60, 90)
    np.testing.assert_array_equal(image, PALETTE[mask])
    assert [has_swatch(strip, color) for color in PALETTE] == [True, False, True, True]
    assert (strip.min(axis=-1) < 128).sum() > 3 * SWATCH * 4  # names are drawn beside the swatches


def test_a_narrow_image_gets_a_legend_wide_enough_for_the_names(tmp_path):
    classes = [ClassInfo("a rather long class name", (200, 40, 40)), ClassInfo("b", (40, 40, 200))]
    mask = np.tile(np.array([[0, 1]], dtype=np.uint8), (50, 4))  # 50 x 8
    make_labels(tmp_path / "out.zarr", mask)
    png = read_png(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", classes))
    assert png.shape[1] > 8 * 10
    assert (png[:50, 8:] == 255).all()  # white beside the image
    assert has_swatch(png[50:], classes[0].color) and has_swatch(png[50:], classes[1].color)


def test_classes_with_the_same_or_near_colours_are_drawn_apart(tmp_path):
    classes = [ClassInfo("forest", (0, 120, 0)), ClassInfo("park", (0, 120, 0)), ClassInfo("grass", (5, 125, 5))]
    colors = preview_colors([c.color for c in classes], [0, 1, 2])
    assert tuple(colors[0]) == (0, 120, 0)  # the first keeps its colour
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert delta_e(colors[i], colors[j]) >= MIN_DELTA_E
    mask = np.repeat(np.array([[0, 1, 2]], dtype=np.uint8), 30, axis=0).repeat(20, axis=1)
    make_labels(tmp_path / "out.zarr", mask)
    image, strip = read_preview(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", classes), 30, 60)
    assert [tuple(image[0, x]) for x in (0, 20, 40)] == [tuple(c) for c in colors]
    assert all(has_swatch(strip, color) for color in colors)  # the legend shows the colours drawn


def test_a_near_white_class_on_a_light_image_is_drawn_darker_and_the_legend_says_so(tmp_path):
    classes = [ClassInfo("field", (230, 170, 40)), ClassInfo("road", (250, 250, 250))]
    light = (235, 235, 235)
    colors = preview_colors([c.color for c in classes], [0, 1], np.array([light, light], dtype=np.float64))
    field, road = (tuple(int(v) for v in c) for c in colors)
    assert field == classes[0].color  # 30.2 from the light image: kept
    assert delta_e(road, light) >= MIN_DELTA_E and road[0] < 235  # darker, so its tint shows
    assert max(road) - min(road) <= 2  # still grey: its hue is kept
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 30:34] = 1
    make_labels(tmp_path / "out.zarr", mask, classes=classes)
    thumbnail = np.full((64, 64, 3), 235, dtype=np.uint8)
    image, strip = read_preview(write_preview(tmp_path / "out.zarr", tmp_path / "p.png", classes, thumbnail=thumbnail), 64, 64)
    assert tuple(image[0, 31]) == tuple(np.rint(0.5 * 235 + 0.5 * np.array(road)).astype(np.uint8))
    assert has_swatch(strip, road) and not has_swatch(strip, classes[1].color)


def test_the_shipped_palettes_are_drawn_as_they_are():
    default_bundle = [(86, 150, 60), (40, 110, 220), (230, 170, 40), (200, 80, 200), (250, 250, 250), (220, 30, 30)]
    for palette in (CLASS_PALETTE, default_bundle):
        np.testing.assert_array_equal(preview_colors(palette, range(len(palette))), np.array(palette, dtype=np.uint8))


def test_many_classes_keep_the_legend_to_the_most_common_ones(tmp_path):
    classes = default_classes(300)
    mask = (np.arange(100 * 300) % 300).reshape(100, 300).astype(np.uint16)
    mask[:50] = 7  # class 7 covers half the image
    make_labels(tmp_path / "out.zarr", mask, classes=classes)
    image, strip = read_preview(write_preview(tmp_path / "out.zarr", tmp_path / "preview.png", classes), 100, 300)
    assert has_swatch(strip, image[0, 0])  # the most common class is listed
    assert strip.shape[0] < 300 * 20 / 4  # 64 entries and "and 236 more classes": not 300 entries
