"""--background in the engine: blank subtrees are neither read nor segmented, the rest is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magnet_cli.io.array import ArraySource
from magnet_cli.io.blank_mask import BlankMask
from magnet_cli.pipeline import Engine
from magnet_cli.settings import InferenceSettings

from tests.conftest import count_reads, NUM_CLASSES, random_rgb


def left_blank(height: int, width: int, blank_width: int, cell: int = 4) -> BlankMask:
    """A mask whose columns [0, blank_width) are blank, in cells of `cell` pixels."""
    cells = np.zeros((-(-height // cell), -(-width // cell)), dtype=bool)
    cells[:, : blank_width // cell] = True
    return BlankMask(cells, 1 / cell, 1 / cell)


def run(bundle, image, mask, units=None, **options):
    """Probabilities per pixel (NaN where the sink got no data), write counts, the boxes read, stats."""
    height, width = image.shape[:2]
    probabilities = torch.zeros(NUM_CLASSES, height, width)
    writes = np.zeros((height, width), dtype=np.int32)
    source = ArraySource(image)
    reads = count_reads(source)

    def sink(region, probs):
        y0, x0, y1, x1 = region
        probabilities[:, y0:y1, x0:x1] = float("nan") if probs is None else probs
        writes[y0:y1, x0:x1] += 1

    engine = Engine(bundle, InferenceSettings(device="cpu", **options))
    stats = engine.run(source, sink, blank=mask, units=units)
    return probabilities, writes, reads, stats


@pytest.mark.parametrize("mode", ["magnet", "fast", "patch"])
def test_blank_windows_are_not_read_and_the_rest_is_unchanged(bundle, mode):
    image = random_rgb(256, 256, seed=4)
    options = {"mode": mode, "levels": 3}  # level 0: the whole image in one window
    if mode == "fast":
        options["fast_patches"] = 0.5
    without, _, all_reads, _ = run(bundle, image, None, **options)
    mask = left_blank(256, 256, 128)
    with_mask, writes, reads, stats = run(bundle, image, mask, **options)
    assert (writes == 1).all()
    # Windows wholly on the blank half were never read; every window read touches the tissue half.
    assert 0 < len(reads) < len(all_reads)
    assert all(box.x1 > 128 for box in reads if (box.y1 - box.y0) < 256)
    blank = torch.isnan(with_mask[0])
    skipped = blank.numpy()
    assert skipped[:, :96].all()  # the subtrees of the blank half's windows were pruned
    assert not skipped[:, 128:].any()
    if mode != "fast":  # Fast chooses among the tissue windows only, so its choice may differ
        assert torch.equal(with_mask[:, ~blank], without[:, ~blank])



def test_units_run_apart_prune_the_same_subtrees_and_give_the_same_maps():
    from tests.conftest import tiny_bundle

    bundle = tiny_bundle(input_size=32)
    image = random_rgb(512, 512, seed=9)
    cells = np.ones((128, 128), dtype=bool)
    cells[:20, :20] = False  # tissue only in the top-left 80 x 80 pixels
    mask = BlankMask(cells, 0.25, 0.25)
    options = {"mode": "magnet", "levels": 5}
    whole, writes, reads, stats = run(bundle, image, mask, **options)
    assert (writes == 1).all() and torch.isnan(whole[0, 100:, :]).all() and torch.isnan(whole[0, :, 100:]).all()
    assert not torch.isnan(whole[0, :80, :80]).any()
    assert sum(stats.windows_per_level) < 20  # of 341 windows without the mask
    engine = Engine(bundle, InferenceSettings(device="cpu", **options))
    units = engine.units(engine.plan(512, 512))
    assert len(units) == 4
    apart = torch.zeros_like(whole)
    for unit in units:  # each unit as its own process would run it
        part, part_writes, _, _ = run(bundle, image, mask, units=[unit], **options)
        owned = torch.from_numpy(part_writes == 1)
        apart[:, owned] = part[:, owned]
    assert torch.equal(torch.isnan(apart), torch.isnan(whole))
    assert torch.equal(apart.nan_to_num(-1), whole.nan_to_num(-1))
