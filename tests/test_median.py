"""The CPU median's selection network (magnet_cli/median.py) against a plain median of unfolded
neighbourhoods, on shapes that stress its flattened rows: tiny planes, kernels wider than the plane,
several leading planes, ties and exact 0/1 planes (the 0-1 principle of sorting networks)."""

import numpy as np
import pytest
import torch

from magnet_cli.median import _median_by_network, _median_by_unfold, _plan


@pytest.mark.parametrize("kernel", [3, 5, 7, 9])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 2, 3), (2, 3, 5, 4), (1, 2, 17, 31), (1, 1, 64, 9)])
def test_the_network_median_is_the_median_of_each_zero_padded_neighbourhood(kernel, shape):
    generator = torch.Generator().manual_seed(kernel * 100 + sum(shape))
    x = torch.rand(*shape, generator=generator)
    assert torch.equal(_median_by_network(x, kernel), _median_by_unfold(x, kernel))
    ties = (x * 3).round() / 3
    assert torch.equal(_median_by_network(ties, kernel), _median_by_unfold(ties, kernel))


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.8])
def test_the_network_is_exact_on_zero_one_planes(kernel, density):
    # A comparator network that sorts/selects correctly on every 0/1 input does so on every input; a
    # 256^2 random 0/1 plane holds a wide sample of the neighbourhood patterns around the median's rank.
    generator = torch.Generator().manual_seed(kernel)
    x = (torch.rand(1, 1, 256, 256, generator=generator) < density).float()
    assert torch.equal(_median_by_network(x, kernel), _median_by_unfold(x, kernel))


def test_the_network_shares_work_between_neighbouring_pixels():
    plan = _plan(5)
    operations = sum(low + high for steps in (plan.column_sort, plan.pair_merge, plan.final) for _, _, low, high in steps)
    # One pruned network over all 25 pixels of each neighbourhood needs 114 comparators (228 min/max).
    assert operations < 0.6 * 228


def test_the_median_keeps_dtype_and_does_not_modify_its_input():
    x = torch.rand(1, 2, 9, 13, generator=torch.Generator().manual_seed(3))
    before = x.clone()
    out = _median_by_network(x, 5)
    assert out.dtype == x.dtype and out.shape == x.shape and torch.equal(x, before)
    assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("kernel", [3, 5, 11])
def test_sixteen_bit_scores_blur_to_the_float_median_of_the_same_values(kernel):
    # refine.score_map blurs its score as uint16 steps on CPU: the network (kernels <= 9) and the unfold
    # path (larger kernels, and a GPU's float steps) must give the float median of the same whole numbers.
    from magnet_cli.median import median_blur

    generator = torch.Generator().manual_seed(kernel)
    steps = (torch.rand(2, 1, 37, 29, generator=generator) * 65535).round()
    steps[0, 0, :4] = 65535  # the top of the range, where int16 would wrap
    blurred = median_blur(steps.to(torch.uint16), kernel)
    assert blurred.dtype == torch.uint16
    assert torch.equal(blurred.float(), _median_by_unfold(steps, kernel))
    assert torch.equal(_median_by_unfold(steps.to(torch.uint16), kernel).float(), _median_by_unfold(steps, kernel))


def test_the_score_is_the_float_score_to_one_step():
    from magnet_cli.median import median_blur
    from magnet_cli.refine import SCORE_STEPS, certainty, score_map, uncertainty

    generator = torch.Generator().manual_seed(1)
    coarse = torch.randn(2, 4, 40, 40, generator=generator).mul(2).softmax(1)
    refined = torch.randn(2, 4, 40, 40, generator=generator).mul(3).softmax(1)
    exact = median_blur(uncertainty(coarse) * certainty(refined), 5)
    assert (score_map(coarse, refined, 5) - exact).abs().max() <= 0.5 / SCORE_STEPS + 1e-7
