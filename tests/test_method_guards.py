"""End-to-end guards of the two choices that make MagNet MagNet, seen only through the Engine's output:

- each streaming window refines its share of the level's points, not the level's whole k;
- MagNet-Fast refines the MOST uncertain windows (the reference code takes the least uncertain).

The models are stubs whose outputs are known exactly: the segmenter's certainty is set by the image's red
channel, and the refiner proposes the uniform distribution everywhere, so every pixel of the output tells
whether it was refined. Nothing here depends on how the engine is written inside.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from magnet_cli.classes import default_classes
from magnet_cli.models.bundle import ModelBundle
from magnet_cli.models.refiner import Refiner
from magnet_cli.models.segmenter import Segmenter
from magnet_cli.refine import points_for_level

from tests.conftest import NUM_CLASSES
from tests.test_pipeline import run

SIZE = 128  # a 128^2 image and a 64 px model: levels 64^2 (one window) and 128^2 (four 64^2 windows)
INPUT = 64
UNIFORM = 1.0 / NUM_CLASSES


class RedDecides(nn.Module):
    """Logits (8r, 8(1 - r), -8): red 1 is surely class 0, red 0 surely class 1, red 0.5 a toss-up."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        red = images[:, :1]
        return torch.cat([8 * red, 8 * (1 - red), torch.full_like(red, -8.0)], dim=1)


def stub_bundle(points: float) -> ModelBundle:
    refiner = Refiner(NUM_CLASSES).eval()
    with torch.no_grad():
        refiner.seg_conv.weight.zero_()  # logits 0: R is exactly uniform wherever it is proposed
    segmenter = Segmenter(RedDecides(), NUM_CLASSES, (INPUT, INPUT))
    return ModelBundle("stub", default_classes(NUM_CLASSES), segmenter, refiner, points=points, smooth_kernel=1)


def quadrants(top_left: int, top_right: int, bottom_left: int, bottom_right: int) -> np.ndarray:
    """A SIZE^2 RGB image whose red channel is constant in each quadrant (one finest window each)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    half = SIZE // 2
    image[:half, :half, 0], image[:half, half:, 0] = top_left, top_right
    image[half:, :half, 0], image[half:, half:, 0] = bottom_left, bottom_right
    return image


def refined(probabilities: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: where the output holds the refiner's uniform proposal instead of the coarse map."""
    return torch.isclose(probabilities, torch.tensor(UNIFORM), atol=1e-6).all(0)


def test_each_streaming_window_refines_its_share_of_a_fractional_points():
    # points 0.3 of the 128^2 level: k = int(16384 * 0.3) = 4915 for the level, round(4915 / 4) = 1229
    # per 64^2 window. A window given the level's whole k would refine min(4096, 4915): every pixel.
    points = 0.3
    probabilities, writes, stats = run(stub_bundle(points), quadrants(255, 255, 255, 255), mode="magnet", selection="window")
    assert stats.windows_per_level == [1, 4] and (writes == 1).all()
    half = SIZE // 2
    per_window = [int(refined(probabilities[:, y : y + half, x : x + half]).sum()) for y in (0, half) for x in (0, half)]
    assert per_window == [1229] * 4
    assert abs(sum(per_window) - points_for_level(points, SIZE * SIZE)) <= 4


def test_a_streaming_points_count_is_spread_over_the_levels_windows():
    # A count of 2000 points for the 128^2 level: 500 per window (a count above 4096 would refine all).
    probabilities, _, _ = run(stub_bundle(2000), quadrants(255, 255, 255, 255), mode="magnet", selection="window")
    assert int(refined(probabilities).sum()) == 4 * 500


def test_whole_level_selection_refines_the_levels_k_in_all():
    probabilities, _, _ = run(stub_bundle(0.3), quadrants(255, 255, 255, 255), mode="magnet", selection="global")
    assert int(refined(probabilities).sum()) == points_for_level(0.3, SIZE * SIZE)


def test_fast_refines_the_most_uncertain_windows_not_the_least():
    # Red 128 (top right) is a toss-up, red 102 (bottom left) fairly unsure, 255 and 13 nearly certain.
    image = quadrants(top_left=255, top_right=128, bottom_left=102, bottom_right=13)
    probabilities, writes, stats = run(stub_bundle(1.0), image, mode="fast", fast_patches=2, selection="global")
    assert stats.windows_per_level == [1, 2] and (writes == 1).all()
    half = SIZE // 2
    chosen = refined(probabilities)
    assert chosen[:half, half:].all() and chosen[half:, :half].all()  # the two unsure windows, wholly
    assert not chosen[:half, :half].any() and not chosen[half:, half:].any()  # the sure ones untouched


def test_fast_with_one_window_takes_the_single_most_uncertain():
    image = quadrants(top_left=13, top_right=102, bottom_left=255, bottom_right=128)
    probabilities, _, stats = run(stub_bundle(1.0), image, mode="fast", fast_patches=1, selection="global")
    half = SIZE // 2
    chosen = refined(probabilities)
    assert stats.windows_per_level == [1, 1]
    assert chosen[half:, half:].all() and int(chosen.sum()) == half * half
