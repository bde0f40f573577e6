"""Exact tests of the refinement math: certainty, median blur, point counts, selection, replacement."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magnet_cli.refine import (
    certainty,
    crop_resize,
    median_blur,
    most_uncertain_windows,
    points_for_level,
    refine,
    replace_points,
    score_map,
    top_mask,
    top_points,
    uncertainty,
    window_points,
)


def probs(*pixels):
    """(1, C, 1, len(pixels)) from per-pixel class probability lists."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, len(pixels[0]), 1, len(pixels))


def test_certainty_is_top1_minus_top2():
    p = probs([0.7, 0.2, 0.1], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0])
    assert torch.allclose(certainty(p).flatten(), torch.tensor([0.5, 0.0, 1.0]))
    assert torch.allclose(uncertainty(p).flatten(), torch.tensor([0.5, 1.0, 0.0]))


def test_certainty_of_an_empty_map_is_zero():
    assert certainty(torch.zeros(1, 3, 2, 2)).abs().sum() == 0


def numpy_median_zero_padded(x: np.ndarray, k: int) -> np.ndarray:
    pad = k // 2
    padded = np.pad(x, pad)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.median(padded[i : i + k, j : j + k])
    return out


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9, 11])
def test_median_blur_matches_a_zero_padded_median_filter(k):
    x = np.random.default_rng(k).random((9, 11)).astype(np.float32)
    got = median_blur(torch.from_numpy(x)[None, None], k)[0, 0].numpy()
    assert np.allclose(got, numpy_median_zero_padded(x, k))


def test_median_blur_hand_case_removes_an_isolated_spike_and_erodes_corners():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0  # isolated spike vanishes
    assert median_blur(x, 3).sum() == 0
    ones = torch.ones(1, 1, 3, 3)  # corners see 4 ones + 5 zero pads: median 0; edges 6 ones: 1
    expected = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    assert torch.equal(median_blur(ones, 3)[0, 0], expected)


def test_even_median_kernel_is_refused():
    with pytest.raises(ValueError):
        median_blur(torch.zeros(1, 1, 4, 4), 16)


@pytest.mark.parametrize(
    "points, pixels, selected, total, expected",
    [
        (2**16, 2048 * 1024, 1, 1, 65536),  # the paper's count
        (32768, 256 * 128, 85, 85, 32768),  # count equal to the level
        (10, 4, 1, 1, 4),  # count clipped to the level
        (0.75, 100, 3, 85, 2),  # fraction scaled by refined windows: int(100 * .75 * 3 / 85)
        (2**16, 512 * 256, 3, 16, 24576),  # count scaled by refined windows (an int, not a float)
        (0.0, 100, 1, 1, 0),
    ],
)
def test_points_for_level(points, pixels, selected, total, expected):
    k = points_for_level(points, pixels, selected, total)
    assert k == expected and isinstance(k, int)


@pytest.mark.parametrize(
    "points, level_pixels, window_pixels, expected",
    [
        # A fraction: k_level = int(16384 * 0.3) = 4915; a 64^2 window of a 128^2 level gets a quarter of
        # it, round(1228.75) = 1229 (not 4915 clipped to 4096: that would refine every point).
        (0.3, 128 * 128, 64 * 64, 1229),
        (0.001, 128 * 128, 64 * 64, 4),  # int(16.384) = 16 for the level, a quarter each
        (0.75, 2448 * 2448, 508 * 508, 193548),  # the reference DeepGlobe run: 0.75 of each window
        (0.5, 40 * 300, 64 * 64, 2048),  # a level smaller than the model input: half the window's map
        (32768, 2048 * 1024, 256 * 128, 512),  # the reference Cityscapes count, spread over 64 windows
        (2**16, 512 * 256, 256 * 128, 16384),  # the paper's count on a level of 4 windows
        (10**6, 128 * 128, 64 * 64, 4096),  # a count beyond the level: the whole window, no more
        (1.0, 128 * 128, 64 * 64, 4096),
        (0.0, 128 * 128, 64 * 64, 0),
    ],
)
def test_window_points_is_the_windows_share_of_the_levels_k(points, level_pixels, window_pixels, expected):
    k = window_points(points, level_pixels, window_pixels)
    assert k == expected and isinstance(k, int)


def test_window_points_of_the_windows_sum_to_the_levels_k():
    """Sixteen 64^2 windows tiling a 256^2 level refine the level's k between them (up to rounding)."""
    for points in (0.05, 0.3, 0.75, 1000, 40000):
        k_level = points_for_level(points, 256 * 256)
        assert abs(16 * window_points(points, 256 * 256, 64 * 64) - k_level) <= 8


def uncertainty_map(*rows: list[float]) -> torch.Tensor:
    """A 2-class (1, 2, H, W) map whose uncertainty 1 - |p0 - p1| is the given value at each pixel."""
    u = torch.tensor(rows, dtype=torch.float64)
    p0 = 1 - u / 2  # top1 - top2 = p0 - (1 - p0) = 1 - u
    return torch.stack([p0, 1 - p0])[None]


def test_fast_picks_the_windows_whose_coarse_map_is_least_certain_on_average():
    # Six 2x2 windows of a 4x6 map; mean uncertainties 0.25, 0.5, 0.0 / 0.75, 1.0, 0.5.
    coarse = uncertainty_map(
        [1.0, 0.0, 0.5, 0.5, 0.0, 0.0],
        [0.0, 0.0, 0.5, 0.5, 0.0, 0.0],
        [0.75, 0.75, 1.0, 1.0, 0.5, 0.5],
        [0.75, 0.75, 1.0, 1.0, 0.5, 0.5],
    )
    assert uncertainty(coarse)[0, 0, 2].tolist() == [0.75, 0.75, 1.0, 1.0, 0.5, 0.5]  # the helper is exact
    regions = [(y, x, y + 2, x + 2) for y in (0, 2) for x in (0, 2, 4)]
    assert most_uncertain_windows(coarse, regions, 1) == [4]
    assert most_uncertain_windows(coarse, regions, 2) == [3, 4]  # in window order, not rank order
    # Window 0 holds the map's only other 1.0 pixel, but its MEAN (0.25) ranks below windows 1 and 5.
    assert most_uncertain_windows(coarse, regions, 3) == [1, 3, 4]  # 1 and 5 tie at 0.5: the lower index
    assert most_uncertain_windows(coarse, regions, 4) == [1, 3, 4, 5]
    assert most_uncertain_windows(coarse, regions, 6) == [0, 1, 2, 3, 4, 5]
    assert most_uncertain_windows(coarse, regions, 99) == [0, 1, 2, 3, 4, 5]
    assert most_uncertain_windows(coarse, regions, 0) == []


def test_fast_breaks_ties_by_window_position():
    coarse = uncertainty_map([0.5] * 4, [0.5] * 4)
    regions = [(0, x, 2, x + 1) for x in range(4)]
    assert most_uncertain_windows(coarse, regions, 2) == [0, 1]


def test_fast_ranks_overlapping_regions_by_their_own_pixels():
    coarse = uncertainty_map([0.0, 0.0, 1.0, 1.0, 1.0])  # 5 px cut into 3 px windows at 0 and 2
    assert most_uncertain_windows(coarse, [(0, 0, 1, 3), (0, 2, 1, 5)], 1) == [1]


def test_top_points_picks_highest_and_breaks_ties_by_lower_index():
    score = torch.tensor([[[[0.1, 0.9, 0.5], [0.9, 0.2, 0.5]]]])
    assert top_points(score, 2).tolist() == [[1, 3]]
    assert top_points(score, 3).tolist() == [[1, 3, 2]]
    assert top_points(score, 10).shape == (1, 6)
    assert top_points(score, 0).shape == (1, 0)


def test_replace_points_copies_refined_probabilities_only_at_indices():
    coarse = torch.zeros(1, 2, 2, 2)
    coarse[:, 0] = 1
    fine = torch.zeros(1, 2, 2, 2)
    fine[:, 1] = 1
    out = replace_points(coarse, fine, torch.tensor([[3, 0]]))
    assert out[0, 1].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert out[0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert coarse[0, 0].sum() == 4  # input untouched


def test_refine_replaces_where_coarse_unsure_and_refined_sure():
    # Pixel 0: Y unsure, R sure -> replaced. Pixel 1: Y sure, R sure -> kept. Pixel 2: Y unsure, R unsure.
    coarse = probs([0.5, 0.5], [0.9, 0.1], [0.5, 0.5])
    refined = probs([0.0, 1.0], [0.0, 1.0], [0.5, 0.5])
    assert torch.allclose(score_map(coarse, refined, 1).flatten(), torch.tensor([1.0, 0.2, 0.0]))
    out = refine(coarse, refined, k=1, smooth_kernel=1)
    assert torch.allclose(out[0, :, 0].T, torch.tensor([[0.0, 1.0], [0.9, 0.1], [0.5, 0.5]]))


def test_score_blurred_at_model_input_size_then_resized_back_nearest():
    coarse = torch.full((1, 2, 8, 8), 0.5)
    refined = torch.zeros(1, 2, 8, 8)
    refined[:, 0] = 1
    refined[:, :, 0, 0] = 0.5  # one uncertain refined pixel
    score = score_map(coarse, refined, 3, blur_size=(4, 4))
    # At 4x4 the top-left 2x2 block is the uncertain pixel's nearest sample: 1 everywhere but the
    # zero-padded corners of the 4x4 grid; back at 8x8 each 4x4 value covers a 2x2 block.
    small = median_blur(F.interpolate(uncertainty(coarse) * certainty(refined), size=(4, 4)), 3)
    assert torch.equal(score, F.interpolate(small, size=(8, 8)))
    assert score[0, 0, 0, 0] == 0 and score[0, 0, 3, 3] == 1


def test_crop_resize_equals_upsample_then_crop():
    maps = torch.rand(2, 3, 16, 12)
    up = F.interpolate(maps, size=(32, 24), mode="bilinear", align_corners=False)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 6.0], [4.0, 3.0, 12.0, 9.0]])  # halves of the map at 2x
    got = crop_resize(maps, boxes, (16, 12))
    assert torch.allclose(got[0], up[0, :, 0:16, 0:12], atol=1e-6)
    assert torch.allclose(got[1], up[1, :, 8:24, 6:18], atol=1e-6)


@pytest.mark.parametrize("classes", [2, 3, 6])
def test_crop_resize_does_not_depend_on_the_thread_count(classes):
    # Dask workers run one torch thread, a plain process two or more: their maps must be bit-identical.
    # (F.interpolate's bilinear kernel on a crop differed by an ulp between 1 and 2 threads for 3
    # channels, which turned into different labels between a Dask worker and one process.)
    maps = torch.rand(4, classes, 130, 66, generator=torch.Generator().manual_seed(classes))
    boxes = torch.tensor([[0, 0, 65, 33], [65, 33, 130, 66], [1, 3, 66, 36], [0.5, 0, 64, 32]], dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = crop_resize(maps, boxes, (130, 66))
        torch.set_num_threads(2)
        two = crop_resize(maps, boxes, (130, 66))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_crop_resize_identity_box_returns_the_map():
    maps = torch.rand(1, 2, 5, 7)
    assert torch.allclose(crop_resize(maps, torch.tensor([[0.0, 0.0, 5.0, 7.0]]), (5, 7)), maps, atol=1e-6)


def test_class_labels_is_argmax_with_ties_to_the_lower_class():
    from magnet_cli.refine import class_labels

    p = torch.rand(5, 7, 9)
    assert torch.equal(class_labels(p), p.argmax(0))
    tied = torch.tensor([[[0.5]], [[0.5]], [[0.0]]])
    assert class_labels(tied).item() == 0


@pytest.mark.parametrize("classes", [2, 3, 6, 19, 256, 300])
def test_host_class_labels_equal_class_labels_with_ties(classes):
    from magnet_cli.refine import class_labels, host_class_labels

    generator = torch.Generator().manual_seed(classes)
    p = torch.rand(classes, 33, 47, generator=generator).softmax(0)
    p[:, :4] = 0.0  # all classes tied: class 0
    p[: classes // 2 + 1, 4:9] = 0.75  # the first half tied above the rest: class 0
    p[classes - 1, 9:11, :5] = 2.0  # the last class alone on top
    p[1:, 11:13] = p[1:, 11:13].flip(0)  # another order of the same values
    got = host_class_labels(p.numpy())
    assert got.dtype == (np.uint8 if classes <= 256 else np.uint16)
    assert np.array_equal(got, class_labels(p).numpy())
    assert got[0, 0] == 0 and got[9, 0] == classes - 1


@pytest.mark.parametrize("classes", [2, 3, 6, 19, 40])
def test_running_top2_certainty_equals_topk_including_ties(classes):
    generator = torch.Generator().manual_seed(classes)
    # Values on a coarse grid, so that best and second best often tie.
    maps = torch.randint(0, 4, (2, classes, 9, 7), generator=generator).float() / 4
    top2 = torch.topk(maps, 2, dim=1).values
    assert torch.equal(certainty(maps), (top2[:, 0] - top2[:, 1]).unsqueeze(1))


@pytest.mark.parametrize("k", [0, 1, 7, 50, 63, 64, 100])
def test_top_mask_marks_exactly_the_top_points(k):
    generator = torch.Generator().manual_seed(k)
    for score in (torch.rand(3, 1, 8, 8, generator=generator), torch.randint(0, 3, (3, 1, 8, 8), generator=generator).float()):
        expected = torch.zeros(3, 64, dtype=torch.bool)
        expected.scatter_(1, top_points(score, k), True)
        assert torch.equal(top_mask(score, k), expected.reshape(3, 1, 8, 8))


def _grid_sampled(maps, boxes, size):
    """crop_resize's general path (grid_sample), for comparing its fast one against."""
    from magnet_cli.refine import _grid_sample_boxes

    return _grid_sample_boxes(maps, boxes, size)


@pytest.mark.parametrize("layout", ["stacked", "expanded", "list"])
def test_crop_resize_of_half_boxes_equals_grid_sample(layout):
    # Child windows in their parent's map: the four quadrants, boxes touching each border, one inside.
    generator = torch.Generator().manual_seed(5)
    parent = torch.rand(1, 6, 64, 48, generator=generator).softmax(1)
    boxes = torch.tensor(
        [[0, 0, 32, 24], [0, 24, 32, 48], [32, 0, 64, 24], [32, 24, 64, 48], [7, 5, 39, 29], [1, 23, 33, 47]],
        dtype=torch.float64,
    )
    maps = {"stacked": parent.repeat(6, 1, 1, 1), "expanded": parent.expand(6, -1, -1, -1), "list": [parent[0]] * 6}[layout]
    got = crop_resize(maps, boxes, (64, 48))
    assert got.shape == (6, 6, 64, 48)
    assert torch.allclose(got, _grid_sampled(parent.expand(6, -1, -1, -1), boxes, (64, 48)), atol=1e-6)
    up = F.interpolate(parent, size=(128, 96), mode="bilinear", align_corners=False)
    assert torch.allclose(got[3], up[0, :, 64:128, 48:96], atol=1e-6)


def test_crop_resize_of_a_box_does_not_depend_on_the_rest_of_its_batch():
    # A window computed alone (MagNet-Fast's ranked-ahead windows, a unit's ancestors) and in a batch
    # must get the same map to the bit, whichever way its batch mates' boxes are resampled.
    maps = torch.rand(3, 4, 40, 40, generator=torch.Generator().manual_seed(6))
    boxes = torch.tensor([[0, 0, 20, 20], [3.5, 0, 23.5, 20], [20, 20, 40, 40]], dtype=torch.float64)
    together = crop_resize(maps, boxes, (40, 40))
    for i in range(3):
        assert torch.equal(together[i], crop_resize(maps[i : i + 1], boxes[i : i + 1], (40, 40))[0])
    # Several parents' children in one batch (blank siblings pruned): the parents as a list, not stacked
    assert torch.equal(crop_resize(list(maps), boxes, (40, 40)), together)
    halves = boxes[[0, 2]]
    assert torch.equal(crop_resize([maps[0], maps[2]], halves, (40, 40)), crop_resize(maps[[0, 2]], halves, (40, 40)))
