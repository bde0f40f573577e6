"""Exact geometry of scale levels, windows, the window tree and output ownership."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from magnet_cli.errors import UsageError
from magnet_cli.pyramid import default_depth, make_plan, place_windows


def test_cityscapes_four_levels_have_85_windows():
    plan = make_plan(1024, 2048, (128, 256), 4)
    assert [(lv.height, lv.width) for lv in plan.levels] == [(128, 256), (256, 512), (512, 1024), (1024, 2048)]
    assert [lv.window_count for lv in plan.levels] == [1, 4, 16, 64]
    assert plan.window_count == 85


def test_deepglobe_crops_612_resized_to_508_have_21_windows():
    plan = make_plan(2448, 2448, (508, 508), [612, 1224, 2448], crop_size=(612, 612))
    assert [lv.window_count for lv in plan.levels] == [1, 4, 16]
    # A level-3 window covers 612 full-resolution pixels; a level-1 window the whole image.
    assert plan.window(2, 1, 1).y1 - plan.window(2, 1, 1).y0 == 612
    assert plan.window(0, 0, 0).y1 == 2448


def test_gleason_levels_625_to_5000_have_85_windows():
    plan = make_plan(5000, 5000, (512, 512), 4, crop_size=(625, 625))
    assert [lv.height for lv in plan.levels] == [625, 1250, 2500, 5000]
    assert plan.window_count == 85


def test_windows_spread_evenly_first_at_zero_last_at_edge():
    assert place_windows(1000, 612) == (0, 388)
    assert place_windows(1001, 400) == (0, 300, 601)
    assert place_windows(1024, 256) == (0, 256, 512, 768)
    assert place_windows(100, 256) == (0,)


def test_image_smaller_than_one_window_is_one_window_of_the_whole_image():
    plan = make_plan(100, 50, (256, 256))
    assert plan.depth == 1
    (window,) = plan.windows(0)
    assert (window.y0, window.x0, window.y1, window.x1) == (0, 0, 100, 50)
    assert plan.owned_region(window) == (0, 0, 100, 50)


def test_default_depth_makes_the_coarsest_level_a_single_window():
    assert default_depth(1024, 2048, 128, 256) == 4
    assert default_depth(32768, 32768, 512, 512) == 7
    assert default_depth(512, 512, 512, 512) == 1
    assert default_depth(513, 100, 512, 512) == 2


def test_far_from_square_aspect_ratio():
    plan = make_plan(300, 20000, (256, 256))
    assert plan.levels[0].window_count == 1
    assert plan.levels[-1].rows.starts == (0, 44)
    assert len(plan.levels[-1].cols.starts) == 79


def test_level_sizes_list_below_full_resolution_scales_window_boxes():
    plan = make_plan(4000, 2000, (256, 256), [512, 1024])
    assert (plan.levels[-1].height, plan.levels[-1].width) == (1024, 512)
    window = plan.window(1, 0, 0)
    assert (window.y1 - window.y0, window.x1 - window.x0) == (1000.0, 1000.0)


def test_children_are_the_four_quadrants_when_sizes_are_multiples():
    plan = make_plan(1024, 1024, (256, 256), 3)
    root = plan.roots()[0]
    assert len(plan.children(root)) == 4
    child = plan.window(1, 1, 0)
    assert [(c.row, c.col) for c in plan.children(child)] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert plan.parent(plan.window(2, 3, 1)) == child


@pytest.mark.parametrize("levels", [[512, 256], [0, 10], [256, 256]])
def test_bad_level_lists_are_usage_errors(levels):
    with pytest.raises(UsageError):
        make_plan(1000, 1000, (128, 128), levels)


def test_levels_larger_than_the_image_are_refused():
    with pytest.raises(UsageError, match="larger than the image"):
        make_plan(1000, 1000, (128, 128), [512, 2048])


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 3000),
    width=st.integers(1, 3000),
    crop=st.sampled_from([64, 100, 128, 256]),
    depth=st.integers(1, 4),
)
def test_tree_covers_every_window_once_and_owned_regions_partition_the_image(height, width, crop, depth):
    plan = make_plan(height, width, (crop, crop), depth)
    # Every window below the roots is the child of exactly one parent.
    for level in range(1, plan.depth):
        seen = [c.key for p in plan.windows(level - 1) for c in plan.children(p)]
        assert sorted(seen) == sorted(w.key for w in plan.windows(level))
    # Finest-level owned regions tile the image exactly once.
    cover = np.zeros((height, width), dtype=np.int32)
    for window in plan.windows(plan.depth - 1):
        y0, x0, y1, x1 = plan.owned_region(window)
        assert window.y0 - 1e-6 <= y0 and y1 <= window.y1 + 1e-6  # owners lie inside their window
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    # Windows stay inside the image.
    for level in range(plan.depth):
        for w in plan.windows(level):
            assert 0 <= w.y0 < w.y1 <= height + 1e-6 and 0 <= w.x0 < w.x1 <= width + 1e-6
