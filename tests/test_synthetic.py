"""`magnet synth`: deterministic, tiling-independent scenes that need both scales, written in three formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from typer.testing import CliRunner

from magnet_cli.classes import parse_classes
from magnet_cli.cli import app
from magnet_cli.errors import OutputError, UsageError
from magnet_cli.io.open import open_image
from magnet_cli.settings import RunSettings
from magnet_cli.synthetic import (
    BUILDING,
    GLASS,
    GLASS_NOISE,
    IGNORE_VALUE,
    FARMLAND,
    FLOODPLAIN,
    MEADOW,
    ROAD,
    ROAD_SEGMENTS,
    SYNTH_CLASSES,
    WATER,
    SceneSpec,
    reduce_into,
    _road_segments,
    image_levels,
    render_region,
    synth,
    write_scene,
)

QUIET = RunSettings(progress=False)

runner = CliRunner()
BIG = SceneSpec(0, 100_000, 100_000)


@pytest.fixture(scope="module")
def scene_2048() -> tuple[np.ndarray, np.ndarray]:
    """The top-left 2048 x 2048 of seed 0: lakes, both soil classes, roads and a village."""
    return render_region(SceneSpec(0, 2048, 2048), 0, 0, 2048, 2048)


def test_same_seed_gives_identical_pixels_and_other_seeds_differ():
    image, mask = render_region(SceneSpec(7, 4096, 4096), 1000, 2000, 1256, 2384)
    again_image, again_mask = render_region(SceneSpec(7, 4096, 4096), 1000, 2000, 1256, 2384)
    assert image.dtype == np.uint8 and image.shape == (256, 384, 3) and mask.shape == (256, 384)
    assert image.tobytes() == again_image.tobytes() and mask.tobytes() == again_mask.tobytes()
    other_image, _ = render_region(SceneSpec(8, 4096, 4096), 1000, 2000, 1256, 2384)
    assert (other_image != image).mean() > 0.5


def test_a_small_scene_is_the_corner_of_a_larger_one():
    small = render_region(SceneSpec(3, 300, 500), 0, 0, 300, 500)
    large = render_region(SceneSpec(3, 9000, 7000), 0, 0, 300, 500)
    assert all((a == b).all() for a, b in zip(small, large))


def test_region_renders_identically_however_it_is_tiled():
    y0, x0 = 200, 300  # roads, houses, meadow and farmland meet here (checked below)
    image, mask = render_region(BIG, y0, x0, y0 + 300, x0 + 400)
    assert {MEADOW, FARMLAND, ROAD, BUILDING} <= set(np.unique(mask).tolist())
    tiled_image, tiled_mask = np.zeros_like(image), np.zeros_like(mask)
    for a, b in ((0, 137), (137, 300)):
        for c, d in ((0, 251), (251, 400)):
            tiled_image[a:b, c:d], tiled_mask[a:b, c:d] = render_region(BIG, y0 + a, x0 + c, y0 + b, x0 + d)
    assert (tiled_image == image).all() and (tiled_mask == mask).all()


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    y0=st.integers(0, 99_000),
    x0=st.integers(0, 99_000),
    h=st.integers(2, 160),
    w=st.integers(2, 160),
    cut=st.tuples(st.floats(0.01, 0.99), st.floats(0.01, 0.99)),
)
def test_any_split_of_any_region_gives_the_same_pixels(seed, y0, x0, h, w, cut):
    spec = SceneSpec(seed, 100_000, 100_000)
    image, mask = render_region(spec, y0, x0, y0 + h, x0 + w)
    sy, sx = max(1, min(h - 1, int(h * cut[0]))), max(1, min(w - 1, int(w * cut[1])))
    for a, b in ((0, sy), (sy, h)):
        for c, d in ((0, sx), (sx, w)):
            part_image, part_mask = render_region(spec, y0 + a, x0 + c, y0 + b, x0 + d)
            assert (part_image == image[a:b, c:d]).all() and (part_mask == mask[a:b, c:d]).all()


def test_region_outside_the_scene_is_refused():
    with pytest.raises(ValueError):
        render_region(SceneSpec(0, 100, 100), 50, 50, 101, 60)
    with pytest.raises(UsageError):
        SceneSpec(0, 0, 10)


def test_roads_are_two_to_six_pixels_wide(scene_2048):
    _, mask = scene_2048
    road = mask == ROAD
    assert road.mean() > 0.002
    # No 1-pixel lines: a 2x2 opening keeps (almost) every road pixel.
    assert ndimage.binary_opening(road, np.ones((2, 2))).sum() >= 0.99 * road.sum()
    # Nothing wider than 6 px: a 7x7 erosion removes every road pixel except where roads meet.
    survivors = np.argwhere(ndimage.binary_erosion(road, np.ones((7, 7)))) + 0.5
    segments = _road_segments(0, 0, 0, 2048, 2048)
    junctions = np.concatenate([segments[::ROAD_SEGMENTS, :2], segments[ROAD_SEGMENTS - 1 :: ROAD_SEGMENTS, 2:4]])
    for point in survivors:
        assert np.hypot(*(junctions - point).T).min() < 12


def test_houses_are_eight_to_twenty_pixels_and_apart(scene_2048):
    _, mask = scene_2048
    labels, _ = ndimage.label(mask == BUILDING)
    inside = [
        box for box in ndimage.find_objects(labels)
        if box[0].start > 0 and box[1].start > 0 and box[0].stop < 2048 and box[1].stop < 2048
    ]
    assert len(inside) > 100
    extents = np.array([(box[0].stop - box[0].start, box[1].stop - box[1].start) for box in inside])
    assert extents.min() >= 8 and extents.max() <= 20
    for box in inside:  # each component is one solid rectangle: one house, never two merged
        assert (mask[box] == BUILDING).all()


def test_context_classes_share_texture_and_differ_only_in_arrangement(scene_2048):
    image, mask = scene_2048
    counts = np.bincount(mask.ravel(), minlength=len(SYNTH_CLASSES))
    assert (counts > 0).all()
    assert counts[FARMLAND] > 100_000 and counts[FLOODPLAIN] > 100_000
    farmland = image[mask == FARMLAND].astype(np.float64)
    floodplain = image[mask == FLOODPLAIN].astype(np.float64)
    meadow = image[mask == MEADOW].astype(np.float64)
    np.testing.assert_allclose(farmland.mean(0), floodplain.mean(0), atol=2.0)
    np.testing.assert_allclose(farmland.std(0), floodplain.std(0), atol=1.0)
    assert np.abs(farmland.mean(0) - meadow.mean(0)).max() > 30  # the soil itself is easy to see
    # What separates them is only the distance to water, beyond a 256 px window's reach for farmland.
    to_water = ndimage.distance_transform_edt(mask != WATER)
    assert to_water[mask == FARMLAND].min() > 300


@pytest.mark.parametrize("fmt, suffix", [("png", ".png"), ("tiff", ".tif"), ("zarr", ".zarr")])
def test_each_format_round_trips_through_open_image(tmp_path, fmt, suffix):
    pairs = synth(tmp_path, size=(300, 500), seed=11, count=1, format=fmt, run=QUIET)
    image_path, mask_path = pairs[0]
    assert image_path == tmp_path / "images" / f"scene_s11_0{suffix}"
    assert mask_path == tmp_path / "masks" / f"scene_s11_0{suffix}"
    expected_image, expected_mask = render_region(SceneSpec(11, 300, 500), 0, 0, 300, 500)
    with open_image(image_path) as source:
        assert (source.height, source.width, source.bands) == (300, 500, 3)
        assert (source.read_level(0, 0, 0, 300, 500) == expected_image).all()
    with open_image(mask_path) as source:
        assert (source.height, source.width, source.bands) == (300, 500, 1)
        mask = source.read_level(0, 0, 0, 300, 500)[..., 0]
        assert mask.max() < len(SYNTH_CLASSES) and (mask == expected_mask).all()


def test_tiff_images_carry_a_box_averaged_pyramid(tmp_path):
    spec = SceneSpec(5, 1100, 700)
    (tmp_path / "masks").mkdir()
    image_path, _ = write_scene(spec, tmp_path, tmp_path / "masks", "s", "tiff")
    assert image_levels(1100, 700) == [(1100, 700), (550, 350)]
    expected, _ = render_region(spec, 0, 0, 1100, 700)
    with open_image(image_path) as source:
        assert [(level.height, level.width) for level in source.levels] == [(1100, 700), (550, 350)]
        means = expected.reshape(550, 2, 350, 2, 3).mean(axis=(1, 3))
        assert (source.read_level(1, 0, 0, 550, 350) == np.rint(means)).all()


def test_pyramid_levels_average_the_pixels_that_exist():
    block = np.array([[0, 1, 9], [2, 2, 9], [4, 4, 7]], np.uint8)[..., None]
    levels = [np.zeros((2, 2, 1), np.uint8), np.zeros((1, 1, 1), np.uint8)]
    reduce_into(levels, block, 0, 0)
    assert levels[0][..., 0].tolist() == [[1, 9], [4, 7]]  # 1.25, 9, 4, 7
    assert levels[1][..., 0].tolist() == [[4]]  # 38 / 9


def test_existing_outputs_are_refused_without_overwrite(tmp_path):
    synth(tmp_path, size=64, seed=1, format="png", run=QUIET)
    with pytest.raises(OutputError, match="scene_s1_0.png"):
        synth(tmp_path, size=64, seed=1, format="png", run=QUIET)
    synth(tmp_path, size=64, seed=1, format="png", run=RunSettings(overwrite=True, progress=False))
    synth(tmp_path, size=64, seed=2, format="png", run=QUIET)  # same classes.json: more scenes may join
    (tmp_path / "classes.json").write_text("[]")
    with pytest.raises(OutputError, match="classes.json"):
        synth(tmp_path, size=64, seed=3, format="png", run=QUIET)


def test_png_refuses_large_scenes_and_bad_options(tmp_path):
    with pytest.raises(UsageError, match="too large for PNG"):
        synth(tmp_path, size=(20_000, 100), format="png", run=QUIET)
    with pytest.raises(UsageError, match="--format"):
        synth(tmp_path, size=64, format="jpeg", run=QUIET)
    with pytest.raises(UsageError, match="--count"):
        synth(tmp_path, size=64, count=0, run=QUIET)
    assert not (tmp_path / "images").exists()


def test_cli_writes_the_dataset_layout_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    args = ["synth", str(out), "--size", "96x128", "--seed", "7", "--count", "2", "--format", "tiff", "--no-progress"]
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert [Path(p["image"]).name for p in written] == ["scene_s7_0.tif", "scene_s7_1.tif"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["scene_s7_0.tif", "scene_s7_1.tif"]
    classes = parse_classes(str(out / "classes.json"))
    assert classes == SYNTH_CLASSES
    with open_image(out / "images" / "scene_s7_1.tif") as source:  # scene 1 has seed 8
        assert (source.read_level(0, 0, 0, 96, 128) == render_region(SceneSpec(8, 96, 128), 0, 0, 96, 128)[0]).all()

    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 2 and "scene_s7_0.tif already exists" in again.output
    assert runner.invoke(app, [*args, "--overwrite"], catch_exceptions=False).exit_code == 0
    bad = runner.invoke(app, ["synth", str(out), "--size", "12x", "--no-progress"], catch_exceptions=False)
    assert bad.exit_code == 2 and "--size" in bad.output


# -- slide-like scenes (`--blank`): tissue islands on empty glass ---------------------------------------
SLIDE = SceneSpec(9000, 4096, 4096, blank=0.75)


@pytest.fixture(scope="module")
def slide_4096() -> tuple[np.ndarray, np.ndarray]:
    return render_region(SLIDE, 0, 0, 4096, 4096)


def test_slide_like_scene_is_about_the_asked_fraction_of_glass(slide_4096):
    image, mask = slide_4096
    glass = mask == IGNORE_VALUE
    assert abs(glass.mean() - 0.75) < 0.05
    assert (image[glass] >= np.array(GLASS)).all() and (image[glass] <= np.array(GLASS) + GLASS_NOISE).all()
    # the glass is the blank part: every whole 256 x 256 window of only glass holds no class at all,
    # and more than half of the windows are such (what `--background` can skip)
    whole = glass.reshape(16, 256, 16, 256).all(axis=(1, 3))
    assert whole.mean() > 0.5


def test_slide_like_tissue_is_the_landscape_of_the_same_seed(slide_4096):
    image, mask = slide_4096
    plain_image, plain_mask = render_region(SceneSpec(9000, 4096, 4096), 0, 0, 4096, 4096)
    tissue = mask != IGNORE_VALUE
    assert (mask[tissue] == plain_mask[tissue]).all() and (image[tissue] == plain_image[tissue]).all()
    assert len(np.unique(mask[tissue])) >= 4  # islands hold several classes, not one


@settings(max_examples=8, deadline=None)
@given(y0=st.integers(0, 3000), x0=st.integers(0, 3000), h=st.integers(1, 600), w=st.integers(1, 600), cut=st.integers(1, 599))
def test_slide_like_regions_render_identically_however_split(y0, x0, h, w, cut):
    cut = min(cut, w - 1) if w > 1 else 0
    image, mask = render_region(SLIDE, y0, x0, y0 + h, x0 + w)
    if cut:
        left = render_region(SLIDE, y0, x0, y0 + h, x0 + cut)
        right = render_region(SLIDE, y0, x0 + cut, y0 + h, x0 + w)
        assert (np.concatenate([left[0], right[0]], axis=1) == image).all()
        assert (np.concatenate([left[1], right[1]], axis=1) == mask).all()


def test_cli_blank_writes_slide_like_scenes_and_refuses_a_bad_fraction(tmp_path):
    out = tmp_path / "slides"
    result = runner.invoke(app, ["synth", str(out), "--size", "256", "--seed", "9000", "--blank", "0.75", "--format", "png", "--no-progress"])
    assert result.exit_code == 0, result.output
    with open_image(out / "masks" / "scene_s9000_0.png") as source:
        written = source.read_level(0, 0, 0, 256, 256)
    assert (written.reshape(256, 256) == render_region(SceneSpec(9000, 256, 256, 0.75), 0, 0, 256, 256)[1]).all()
    for bad in ("1.0", "-0.1"):
        refused = runner.invoke(app, ["synth", str(tmp_path / "x"), "--size", "64", "--blank", bad, "--no-progress"])
        assert refused.exit_code == 2 and "--blank" in refused.output
    with pytest.raises(UsageError, match="--blank"):
        SceneSpec(0, 64, 64, blank=1.0)
