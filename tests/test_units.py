"""Units of work: every output pixel belongs to one unit, any split of the units gives the same maps."""

from __future__ import annotations

import pytest
import torch

from magnet_cli.io.array import ArraySource
from magnet_cli.pipeline import Engine
from magnet_cli.pyramid import make_plan
from magnet_cli.settings import InferenceSettings
from magnet_cli.units import SUBTREE_LEVELS, Tree, shard, split_units
from tests.conftest import random_rgb


def finest_windows(plan, units):
    tree = Tree(plan)
    found = []
    for unit in units:
        frontier = unit.roots(plan)
        while frontier and frontier[0].level < plan.depth - 1:
            frontier = [child for window in frontier for child in tree.children(window)]
        found.extend(w.key for w in frontier)
    return found


@pytest.mark.parametrize("size", [(64, 64), (300, 200), (1024, 1024), (1500, 700), (4096, 2500)])
@pytest.mark.parametrize("input_size", [(64, 64), (48, 80)])
def test_units_cover_every_finest_window_exactly_once(size, input_size):
    plan = make_plan(*size, input_size)
    units = split_units(plan)
    found = finest_windows(plan, units)
    assert sorted(found) == sorted(w.key for w in plan.windows(plan.depth - 1))
    assert len(found) == len(set(found))
    if plan.depth > SUBTREE_LEVELS:
        assert len(units) == plan.levels[plan.depth - SUBTREE_LEVELS].window_count > 1


def test_single_level_plans_split_into_blocks():
    plan = make_plan(1000, 1000, (64, 64), levels=1)
    units = split_units(plan)
    assert len(units) == 4  # 16 x 16 windows in blocks of 8 x 8
    assert sorted(finest_windows(plan, units)) == sorted(w.key for w in plan.windows(0))


@pytest.mark.parametrize("count", [1, 2, 3, 7, 40])
def test_shards_partition_the_units_in_order(count):
    units = split_units(make_plan(4096, 4096, (64, 64)))
    parts = [shard(units, index, count) for index in range(count)]
    assert [u for part in parts for u in part] == units


def test_tree_counts_match_what_the_engine_computes(bundle):
    image = random_rgb(1024, 700, seed=4)
    engine = Engine(bundle, InferenceSettings(device="cpu"))
    plan = engine.plan(*image.shape[:2])
    units = engine.units(plan)
    chosen = units[1:3]
    stats = engine.run(ArraySource(image), lambda region, p: None, units=chosen)
    assert stats.windows_per_level == Tree(plan).windows_per_level(chosen)


@pytest.mark.parametrize("mode, size", [("magnet", 1536), ("patch", 1024)])
def test_any_split_of_the_units_gives_identical_maps(bundle, mode, size):
    image = ArraySource(random_rgb(size, size, seed=5))
    engine = Engine(bundle, InferenceSettings(device="cpu", mode=mode, batch_size=3))
    plan = engine.plan(size, size)
    units = engine.units(plan)
    chosen = [units[0], units[len(units) // 2], units[-1]]  # under different ancestors in magnet mode
    if mode == "magnet":
        tree = Tree(plan)
        parents = {tree.ancestors(u.roots(plan)[0])[-1].key for u in chosen}
        assert len(parents) == 3

    def collect(order):
        found = {}
        done = []
        engine.run(image, lambda region, p: found.__setitem__(region, p.clone()), units=order, unit_done=done.append)
        assert done == list(order)
        return found

    together = collect(chosen)
    alone = {}
    for unit in reversed(chosen):  # each "shard" on its own, in reverse order
        alone.update(collect([unit]))
    assert together.keys() == alone.keys()
    for region in together:
        assert torch.equal(together[region], alone[region]), region


@pytest.mark.parametrize("options", [{"mode": "fast", "fast_patches": 2}, {"mode": "fast", "fast_patches": 2, "selection": "global"},
                                     {"selection": "global"}, {"mode": "patch"}])
def test_planned_window_counts_match_the_run_in_every_engine(bundle, options):
    image = random_rgb(700, 600, seed=6)
    engine = Engine(bundle, InferenceSettings(device="cpu", **options))
    plan = engine.plan(*image.shape[:2])
    units = engine.units(plan)
    stats = engine.run(ArraySource(image), lambda region, p: None, units=units)
    assert engine.windows_to_do(plan, units) == stats.windows_per_level
    assert engine.windows_to_do(plan, []) == [0] * plan.depth
