"""MagNet-Fast's choice of windows (fast.py): the most uncertain first, by count or fraction."""

from __future__ import annotations

import pytest
import torch

from magnet_cli.fast import FastChoice, chooses_on, ranking_depth, windows_to_refine
from magnet_cli.pyramid import make_plan


def test_the_most_uncertain_windows_are_chosen():
    plan = make_plan(512, 512, (256, 256), 2, None)  # level 0: the whole image; level 1: 2 x 2 windows
    (root,) = plan.windows(0)
    certain = torch.zeros(2, 256, 256)
    certain[0] = 1.0
    certain[:, 128:, 128:] = 0.5  # the bottom-right quarter is a coin toss
    certain[:, :128, :100] = torch.tensor([0.7, 0.3])[:, None, None]  # top-left: a little unsure
    choice = FastChoice(plan, 1, "all")
    choice.rank(1, {root.key: certain})
    assert [(w.row, w.col) for w in plan.windows(1) if choice.refines(w)] == [(1, 1)]
    choice = FastChoice(plan, 2, "all")
    choice.rank(1, {root.key: certain})
    assert {(w.row, w.col) for w in plan.windows(1) if choice.refines(w)} == {(1, 1), (0, 0)}
    assert choice.counts() == [1, 2] and choice.refines(root)


def test_ties_go_to_the_lower_index():
    plan = make_plan(512, 512, (256, 256), 2, None)
    (root,) = plan.windows(0)
    choice = FastChoice(plan, 3, "all")
    choice.rank(1, {root.key: torch.full((2, 256, 256), 0.5)})
    assert {(w.row, w.col) for w in plan.windows(1) if choice.refines(w)} == {(0, 0), (0, 1), (1, 0)}


@pytest.mark.parametrize("count, setting, expected", [(64, 3, 3), (2, 3, 2), (64, 0.25, 16), (3, 0.1, 1), (10, 0.5, 5)])
def test_a_count_or_a_fraction_of_each_level(count, setting, expected):
    assert windows_to_refine(count, setting) == expected


def test_the_coarse_levels_ranked_ahead_stay_few():
    plan = make_plan(4096, 4096, (256, 256), 5, None)  # 1, 4, 16, 64, 256 windows
    assert ranking_depth(plan) == 3
    assert ranking_depth(make_plan(256, 256, (256, 256), 1, None)) == 1


def test_a_streamed_level_is_cut_where_the_coarse_ranking_would_stop_then_chosen_on_each_parent():
    plan = make_plan(1024, 1024, (256, 256), 3, None)  # 1, 2 x 2, 4 x 4 windows
    (root,) = plan.windows(0)
    root_map = torch.zeros(2, 256, 256)
    root_map[0] = 1.0
    root_map[:, :, :64] = 0.5  # the left quarter (level 2's first column) a coin toss on the coarse map
    choice = FastChoice(plan, 4, "all")  # 4 of level 2's 16 windows (and all 4 of level 1)
    choice.rank(1, {root.key: root_map})
    choice.calibrate(2, {root.key: root_map})
    assert choice._cutoffs[2] == pytest.approx(1.0)  # the 4th most unsure window's mean uncertainty
    assert choice.counts()[2] == 0  # nothing chosen before the parents are done
    parent = plan.window(1, 0, 1)  # its actual map: unsure over its top-right child only
    parent_map = torch.zeros(2, 256, 256)
    parent_map[0] = 1.0
    parent_map[:, :128, 128:] = 0.5
    choice.choose_children(parent, parent_map)
    choice.choose_children(parent, parent_map)  # the same parent again (another unit's roots): no change
    assert [(w.row, w.col) for w in plan.windows(2) if choice.refines(w)] == [(0, 3)]
    assert choice.counts() == [1, 4, 1]


def test_blank_children_of_a_streamed_level_are_never_chosen():
    plan = make_plan(1024, 1024, (256, 256), 3, None)
    (root,) = plan.windows(0)
    unsure = torch.full((2, 256, 256), 0.5)
    choice = FastChoice(plan, 0.5, "all", skips=lambda w: w.level == 2 and w.col == 0)
    choice.calibrate(2, {root.key: unsure})
    choice.choose_children(plan.window(1, 0, 0), unsure)
    assert sorted((w.row, w.col) for w in plan.windows(2) if choice.refines(w)) == [(0, 1), (1, 1)]


def test_a_streamed_level_asked_for_all_its_windows_refines_all():
    plan = make_plan(1024, 1024, (256, 256), 3, None)
    (root,) = plan.windows(0)
    choice = FastChoice(plan, 16, "all")
    choice.calibrate(2, {root.key: torch.full((2, 256, 256), 0.5)})  # unsure everywhere on the coarse map
    certain = torch.zeros(2, 256, 256)
    certain[0] = 1.0  # while the parents' own maps are sure
    for parent in plan.windows(1):
        choice.choose_children(parent, certain)
    assert choice.counts()[2] == 16


@pytest.mark.parametrize("fast_levels, choosing", [("all", [False, True, True, True]), (1, [False, False, False, True]),
                                                   (2, [False, False, True, True]), (9, [False, True, True, True])])
def test_fast_chooses_on_the_finest_levels_asked_and_never_on_the_coarsest(fast_levels, choosing):
    assert [chooses_on(level, 4, fast_levels) for level in range(4)] == choosing


def test_levels_it_does_not_choose_on_are_refined_in_full_and_the_finest_still_chooses():
    plan = make_plan(1024, 1024, (256, 256), 3, None)  # 1, 2 x 2, 4 x 4 windows
    (root,) = plan.windows(0)
    root_map = torch.zeros(2, 256, 256)
    root_map[0] = 1.0
    root_map[:, :, :64] = 0.5  # the left quarter unsure
    choice = FastChoice(plan, 2, 1)
    choice.rank(1, {root.key: root_map})  # level 1 is not the finest: ranking it keeps every window
    choice.calibrate(2, {root.key: root_map})
    assert all(choice.refines(w) for w in plan.windows(1)) and choice.counts()[:2] == [1, 4]
    assert choice._cutoffs[2] == pytest.approx(1.0)  # the finest level is cut as with every level chosen
    unsure_left = torch.stack([torch.ones(256, 256), torch.zeros(256, 256)])
    unsure_left[:, :, :128] = 0.5  # a parent of the left column: unsure over its left children
    for parent in plan.windows(1):
        choice.choose_children(parent, unsure_left if parent.col == 0 else torch.stack([torch.ones(256, 256), torch.zeros(256, 256)]))
    assert sorted((w.row, w.col) for w in plan.windows(2) if choice.refines(w)) == [(0, 0), (1, 0), (2, 0), (3, 0)]


def _two_class_map(first: float) -> torch.Tensor:
    """A (2, 256, 256) map with probabilities (first, 1 - first) everywhere: uncertainty 1 - |2 first - 1|."""
    return torch.stack([torch.full((256, 256), first), torch.full((256, 256), 1 - first)])


def test_a_level_ranked_on_grandparents_is_cut_by_how_much_surer_its_own_y_is():
    plan = make_plan(2048, 2048, (256, 256), 4, None)  # 1, 2 x 2, 4 x 4, 8 x 8 windows
    ranking = {w.key: _two_class_map(0.6 if (w.row, w.col) == (0, 0) else 1.0) for w in plan.windows(1)}
    choice = FastChoice(plan, 0.25, 2)  # 4 of level 2's 16 windows, 16 of level 3's 64
    choice.calibrate(2, ranking)
    choice.calibrate(3, ranking)
    assert choice._cutoffs[3] == pytest.approx(0.8)  # the 16 windows under level 1's (0, 0), u = 0.8 there
    for parent in plan.windows(1):
        choice.choose_children(parent, ranking[parent.key])  # level 2 is ranked on its parents: exact
    assert sorted((w.row, w.col) for w in plan.windows(2) if choice.refines(w)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    probes = choice.probe_windows(2, ranking)
    assert sorted((w.row, w.col) for w in probes) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # only where it is unsure
    surer = _two_class_map(0.8)  # their own maps, refined: u = 0.4, half the ranking's
    assert choice.correct(2, {w.key: surer for w in probes}, ranking) == pytest.approx(0.5)
    for probe in probes:
        choice.choose_children(probe, surer)
    assert choice.counts()[3] == 16  # uncorrected, none of them (0.4 < 0.8)
    unrefined = plan.window(2, 3, 3)  # left to its coarse map: its children keep the raw cutoff
    choice.choose_children(unrefined, _two_class_map(0.75))  # u = 0.5: under 0.8, over the corrected 0.4
    assert choice.counts()[3] == 16


def test_probes_left_unrefined_teach_nothing():
    plan = make_plan(2048, 2048, (256, 256), 4, None)
    ranking = {w.key: _two_class_map(0.6) for w in plan.windows(1)}
    choice = FastChoice(plan, 0.25, 2)
    choice.calibrate(2, ranking)
    choice.calibrate(3, ranking)  # nothing chosen on level 2 yet: every probe counts as unrefined
    probes = choice.probe_windows(2, ranking)
    assert probes and choice.correct(2, {w.key: _two_class_map(0.8) for w in probes}, ranking) == 1.0


def test_no_probe_when_no_level_below_the_first_streamed_one_has_a_cutoff():
    plan = make_plan(2048, 2048, (256, 256), 4, None)
    ranking = {w.key: _two_class_map(0.6) for w in plan.windows(1)}
    choice = FastChoice(plan, 0.25, 2)  # chooses on levels 2 and 3
    choice.calibrate(2, ranking)  # level 2 is ranked on its parents: its cutoff is exact, nothing to correct
    assert choice.probe_windows(2, ranking) == []
    choice.calibrate(3, ranking)
    assert choice.probe_windows(2, ranking)
    everything = FastChoice(plan, 64, 1)  # all of the finest level: no cutoff
    everything.calibrate(3, ranking)
    assert everything.probe_windows(2, ranking) == []
