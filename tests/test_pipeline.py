"""Engine behaviour on in-memory images: coverage, determinism, mode semantics, bounded queues."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magnet_cli.errors import UsageError
from magnet_cli.io.array import ArraySource
from magnet_cli.pipeline import Engine
from magnet_cli.settings import InferenceSettings

from tests.conftest import count_reads, NUM_CLASSES, random_rgb, tiny_bundle


def run(bundle, image, **options):
    """Run the engine; return the full probability map and how often each pixel was written."""
    height, width = image.shape[:2]
    probabilities = torch.zeros(NUM_CLASSES, height, width)
    writes = np.zeros((height, width), dtype=np.int32)

    def sink(region, probs):
        y0, x0, y1, x1 = region
        assert probs.shape == (NUM_CLASSES, y1 - y0, x1 - x0)
        probabilities[:, y0:y1, x0:x1] = probs
        writes[y0:y1, x0:x1] += 1

    stats = Engine(bundle, InferenceSettings(device="cpu", **options)).run(ArraySource(image), sink)
    return probabilities, writes, stats


@pytest.mark.parametrize(
    "mode, selection", [("magnet", "window"), ("magnet", "global"), ("fast", "global"), ("patch", "window"), ("downsample", "window")]
)
@pytest.mark.parametrize("shape", [(200, 150), (64, 64), (40, 300)])
def test_every_pixel_is_written_exactly_once(bundle, mode, selection, shape):
    probabilities, writes, stats = run(bundle, random_rgb(*shape), mode=mode, selection=selection)
    assert (writes == 1).all()
    assert torch.allclose(probabilities.sum(0), torch.ones(shape), atol=1e-4)


def test_runs_are_deterministic(bundle):
    image = random_rgb(300, 260, seed=3)
    first, _, _ = run(bundle, image, mode="magnet")
    second, _, _ = run(bundle, image, mode="magnet")
    assert torch.equal(first, second)


def test_patch_mode_is_the_segmenter_on_each_full_resolution_window(bundle):
    image = random_rgb(128, 128)
    probabilities, _, stats = run(bundle, image, mode="patch", precision="fp32")  # as the reference below
    assert stats.windows_per_level == [4]
    window = torch.from_numpy(image[64:128, 0:64]).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        expected = bundle.segmenter(window).softmax(1)[0]
    assert torch.allclose(probabilities[:, 64:128, 0:64], expected, atol=1e-5)


def test_downsample_mode_is_the_segmenter_on_the_whole_image_upsampled(bundle):
    image = random_rgb(128, 128)
    probabilities, _, stats = run(bundle, image, mode="downsample", precision="fp32")  # as the reference below
    assert stats.windows_per_level == [1]
    whole = F.adaptive_avg_pool2d(torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255, (64, 64))
    with torch.no_grad():
        expected = F.interpolate(bundle.segmenter(whole).softmax(1), size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(probabilities, expected[0], atol=1e-5)


@pytest.mark.parametrize("selection", ["window", "global"])
def test_zero_points_keeps_the_coarse_map_upsampled(bundle, selection):
    image = random_rgb(128, 128)
    refined, _, _ = run(bundle, image, mode="magnet", points=0, selection=selection)
    coarse, _, _ = run(bundle, image, mode="downsample")
    assert torch.allclose(refined, coarse, atol=1e-5)


def test_all_points_take_the_refiners_proposal_everywhere(bundle):
    image = random_rgb(128, 128)
    everything, _, _ = run(bundle, image, mode="magnet", points=1.0, smooth_kernel=1)
    nothing, _, _ = run(bundle, image, mode="magnet", points=0)
    assert not torch.allclose(everything, nothing, atol=1e-3)


@pytest.mark.parametrize("points", [0.0, 1.0])
def test_window_and_global_engines_compute_the_same_maps_when_selection_cannot_differ(points):
    bundle = tiny_bundle(input_size=64)
    image = random_rgb(128, 128, seed=5)
    # Two levels: children crop the root's map, which spans the whole image, so both engines see the
    # same Y and R; with no points or all points the per-window and whole-level choices coincide.
    # fp32: the engines cut Y differently (crops vs one whole-level resize), which bf16 can round apart.
    window, _, _ = run(bundle, image, mode="magnet", selection="window", points=points, smooth_kernel=1, precision="fp32")
    whole, _, _ = run(bundle, image, mode="magnet", selection="global", points=points, smooth_kernel=1, precision="fp32")
    assert torch.allclose(window, whole, atol=1e-5)


@pytest.mark.parametrize("fast_levels, expected", [("all", [1, 2, 2]), (1, [1, 4, 2]), (2, [1, 2, 2])])
def test_fast_mode_refines_only_the_most_uncertain_windows(bundle, fast_levels, expected):
    image = random_rgb(256, 256)
    _, _, stats = run(bundle, image, mode="fast", fast_patches=2, fast_levels=fast_levels, selection="global")
    assert stats.windows_per_level == expected  # levels it does not choose on: refined in full


def test_streaming_queue_stays_bounded_whatever_the_image_size():
    bundle = tiny_bundle(input_size=16)
    peaks = []
    for size in (128, 512):
        _, _, stats = run(bundle, np.zeros((size, size, 3), np.uint8), mode="magnet", batch_size=2)
        peaks.append(stats.peak_queued_windows)
        assert stats.windows == sum(4**k for k in range(len(stats.windows_per_level)))
    # 128 px: 4 levels, 85 windows; 512 px: 6 levels, 1365 windows. The queue grows with depth only.
    assert peaks[1] <= peaks[0] + 2 * 10 * 2


def test_mode_needing_a_refiner_without_one_is_a_usage_error(bundle):
    bundle.refiner = None
    with pytest.raises(UsageError, match="needs a refiner"):
        Engine(bundle, InferenceSettings(mode="magnet"))


@pytest.mark.parametrize("options, message", [({"smooth_kernel": 4}, "odd"), ({"mode": "nope"}, "--mode"), ({"device": "tpu"}, "--device")])
def test_bad_settings_are_usage_errors(bundle, options, message):
    with pytest.raises(UsageError, match=message):
        Engine(bundle, InferenceSettings(**options))


def test_whole_level_modes_refuse_images_whose_level_maps_would_not_fit(bundle, monkeypatch):
    from magnet_cli import devices

    monkeypatch.setattr(devices, "free_memory", lambda device: 2 * 5 * 4 * NUM_CLASSES * 200 * 200 - 1)
    image = random_rgb(200, 200)
    for mode, selection in (("fast", "global"), ("magnet", "global")):
        with pytest.raises(UsageError, match="--selection window"):
            run(bundle, image, mode=mode, selection=selection)
    _, writes, _ = run(bundle, image, mode="magnet", selection="window")  # streaming is unaffected
    assert (writes == 1).all()


def test_a_large_owned_region_reaches_the_sink_in_bounded_pieces(bundle, monkeypatch):
    """downsample mode: one 64 px map owns the whole image; it must not be resampled in one piece."""
    from magnet_cli import pipeline

    image = random_rgb(200, 150, seed=4)
    whole, _, _ = run(bundle, image, mode="downsample")
    monkeypatch.setattr(pipeline, "EMIT_TILE", 48)
    pieces: list[tuple[int, int]] = []
    original = pipeline._resample
    monkeypatch.setattr(pipeline, "_resample", lambda maps, box, size: pieces.append(size) or original(maps, box, size))
    tiled, writes, _ = run(bundle, image, mode="downsample")
    assert (writes == 1).all() and max(max(size) for size in pieces) <= 48 and len(pieces) == 5 * 4
    assert torch.allclose(tiled, whole, atol=1e-5)


# With only level 0 ranked ahead, every other level is chosen as it streams; 1100 x 1200 has units whose
# roots lie on level 2, so choices are made for their ancestors and for their roots as well.
@pytest.mark.parametrize("ranked_ahead, size", [(21, (200, 150)), (1, (1100, 1200))])
def test_streaming_fast_refining_every_window_is_magnet(bundle, monkeypatch, ranked_ahead, size):
    monkeypatch.setattr("magnet_cli.fast.RANKING_WINDOWS", ranked_ahead)
    image = random_rgb(*size, seed=6)
    magnet, _, _ = run(bundle, image, mode="magnet")
    fast, writes, stats = run(bundle, image, mode="fast", fast_patches=1_000_000)
    assert (writes == 1).all() and torch.equal(fast, magnet)


@pytest.mark.parametrize("fast_levels", ["all", 1])
@pytest.mark.parametrize("size", [(300, 260), (600, 520)])  # 600 x 520: probes below the ranked levels
def test_streaming_fast_reads_and_segments_only_the_chosen_windows(bundle, monkeypatch, fast_levels, size):
    from magnet_cli.fast import level_windows_to_refine, ranking_depth

    image = random_rgb(*size, seed=7)
    engine = Engine(bundle, InferenceSettings(device="cpu", mode="fast", fast_patches=0.25, fast_levels=fast_levels))
    source = ArraySource(image)
    reads = count_reads(source)
    writes = np.zeros(image.shape[:2], dtype=np.int32)

    def sink(region, probabilities):
        y0, x0, y1, x1 = region
        writes[y0:y1, x0:x1] += 1

    stats = engine.run(source, sink)
    plan = engine.plan(*size)
    chosen = engine._fast.counts()  # kept after the run: the windows it refined, per level
    ahead = ranking_depth(plan)
    # A level below the first streamed one is ranked on grandparents: some windows were probed ahead
    assert (engine._fast.cutoff_ratio != 1.0) == (ahead + 1 < plan.depth)
    assert ahead < plan.depth  # levels streamed after the ranked ones, chosen on their parents' maps
    assert chosen[:ahead] == [level_windows_to_refine(i, plan.depth, plan.levels[i].window_count, 0.25, fast_levels) for i in range(ahead)]
    if fast_levels == 1:  # only the finest level chooses: every coarser one refined in full
        assert chosen[:-1] == [level.window_count for level in plan.levels[:-1]]
    assert (writes == 1).all()
    assert len(reads) == sum(chosen)  # each chosen window once (the coarse levels in the ranking pass)
    assert stats.refined_per_level == chosen and stats.windows_per_level == [l.window_count for l in plan.levels]
    assert 0 < sum(chosen[ahead:]) < sum(l.window_count for l in plan.levels[ahead:])  # some left to Y


@pytest.mark.parametrize("ranked_ahead", [21, 1])  # 1: only level 0 ahead, units' roots on streamed levels
def test_streaming_fast_chooses_the_same_windows_when_split_in_units(bundle, monkeypatch, ranked_ahead):
    monkeypatch.setattr("magnet_cli.fast.RANKING_WINDOWS", ranked_ahead)
    image = random_rgb(520, 600, seed=8)
    whole, _, _ = run(bundle, image, mode="fast", fast_patches=0.3)
    engine = Engine(bundle, InferenceSettings(device="cpu", mode="fast", fast_patches=0.3))
    plan = engine.plan(520, 600)
    units = engine.units(plan)
    assert len(units) > 1
    parts = torch.zeros_like(whole)

    def sink(region, probabilities):
        y0, x0, y1, x1 = region
        parts[:, y0:y1, x0:x1] = probabilities

    for unit in reversed(units):  # one unit per run, in another order: as shards or workers would
        engine.run(ArraySource(image), sink, units=[unit])
    assert torch.equal(parts, whole)


@pytest.mark.parametrize("order", ["coarse_fine", "fine_coarse"])
def test_the_engines_refiner_calls_are_the_refiner_on_y_and_o_in_its_input_order(order):
    # The engine builds the refiner's input itself (joined once, in channels_last): it must be the
    # network's own forward(Y, O), softmaxed, whichever order the checkpoint was trained with.
    bundle = tiny_bundle(seed=3)
    bundle.refiner.input_order = order
    # fp32 as the reference below (`auto` takes bf16 on a CPU with native bf16)
    engine = Engine(bundle, InferenceSettings(device="cpu", mode="magnet", batch_size=3, precision="fp32"))
    generator = torch.Generator().manual_seed(4)
    coarse = torch.rand(3, NUM_CLASSES, 64, 64, generator=generator).softmax(1)
    fine = torch.rand(3, NUM_CLASSES, 64, 64, generator=generator).softmax(1)
    from magnet_cli.pipeline import RunStats

    with torch.inference_mode():
        got = engine.propose_refinement(coarse, fine, RunStats())
        expected = torch.softmax(engine.refiner(coarse, fine), dim=1)
        swapped = torch.softmax(engine.refiner(fine, coarse), dim=1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, swapped, atol=1e-3)  # the order matters for this refiner
