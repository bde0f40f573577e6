"""The benchmark harness: every variant is run, scored against the truth and reported."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from magnet_cli import bench
from magnet_cli.bench import VARIANTS, benchmark, markdown, run_measured
from magnet_cli.classes import default_classes
from magnet_cli.errors import InputError, MagnetError, OutputError, UsageError
from magnet_cli.evaluation import evaluate
from magnet_cli.settings import InferenceSettings, ModelSettings, RunSettings, Selection

from tests.conftest import NUM_CLASSES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUIET = RunSettings(progress=False)
CPU = InferenceSettings(device="cpu")


def blocky_dataset(root: Path, count: int = 2, size: int = 128) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        mask = np.repeat(np.repeat(rng.integers(0, NUM_CLASSES, (8, 8)), size // 8, 0), size // 8, 1).astype(np.uint8)
        image = (mask[:, :, None] * 80 + rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
        iio.imwrite(root / "images" / f"img{i}.png", image)
        iio.imwrite(root / "masks" / f"img{i}.png", mask)
    return root


# Run in spawned children of `run_measured`: module-level, so the child imports them by name.
def touch_megabytes(megabytes: int) -> int:
    block = b"\x01" * (megabytes << 20)  # written, so every page is resident
    return len(block) >> 20


def refuse_input(path: str) -> None:
    raise InputError(f"{path}: not an image")


def exit_without_answer(code: int) -> None:
    os._exit(code)


def test_each_variant_is_scored_on_its_own_masks(tmp_path, bundle_dir):
    data = blocky_dataset(tmp_path / "data", count=1)
    out = tmp_path / "out"
    report = benchmark(data, out, model=ModelSettings(model=bundle_dir), modes=["downsample", "fast", "magnet"], sizes=[128], slide_size=0,
                       inference=CPU, peer=False, run=QUIET)
    assert [row["mode"] for row in report.modes] == ["downsample", "fast", "magnet"]
    for row in report.modes:
        rescored = evaluate([out / "work" / "masks" / row["mode"]], [data], model=bundle_dir, run=QUIET)
        assert row["miou"] == pytest.approx(rescored.total.miou, abs=1e-5)
        assert row["peak_rss_mb"] > 50
    # 128 px images, 64 px model input: downsample reads 1 window, Fast and MagNet walk 1 + 4; Fast
    # refines a quarter of the finest level (its default --fast-patches 0.25), MagNet all of them.
    assert [row["windows_per_image"] for row in report.modes] == [1, 5, 5]
    assert [row["refined_per_image"] for row in report.modes] == [1, 2, 5]
    assert report.scaling[0]["size"] == 128 and report.scaling[0]["windows"] == 5
    assert report.limit is not None and report.limit["windows"] == 5 and report.limit["model_only_s"] > 0
    pairs = report.limit["pairs_s"]  # interleaved runs; the overhead is the median of theirs
    assert len(pairs) == report.limit["repeats"] >= 2
    ratios = sorted(e / m - 1 for e, m in pairs)
    assert ratios[0] - 0.01 <= report.limit["overhead_of_model_time"] <= ratios[-1] + 0.01
    assert report.selection_difference is None  # magnet-global was not asked for
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["modes"] == report.modes
    assert "| magnet |" in (out / "benchmark.md").read_text()
    for plot in report.plots:
        assert Path(plot).read_bytes()[:8] == PNG_SIGNATURE
    assert len(report.plots) == 2


def test_markdown_names_every_mode_and_the_selection_difference(tmp_path, bundle_dir):
    data = blocky_dataset(tmp_path / "data", count=1, size=64)
    report = benchmark(data, tmp_path / "out", model=ModelSettings(model=bundle_dir), modes=["magnet", "magnet-global"], slide_size=0,
                       sizes=[], inference=CPU, peer=False, limit=False, run=QUIET)
    text = markdown(report)
    assert "| magnet-global |" in text and "Whole-level minus per-window" in text
    by_mode = {row["mode"]: row["miou"] for row in report.modes}
    assert report.selection_difference == pytest.approx(by_mode["magnet-global"] - by_mode["magnet"], abs=2e-5)


def test_each_variant_runs_its_own_method_with_the_shared_batch_size_and_device():
    shared = InferenceSettings(batch_size=7, device="cpu", smooth_kernel=5)
    settings = VARIANTS["magnet-global"].run_with(shared)
    assert (settings.mode, settings.selection, settings.batch_size, settings.device, settings.smooth_kernel) == (
        "magnet", Selection.global_, 7, "cpu", 5)
    assert VARIANTS["fast"].run_with(shared).mode == "fast"


def test_unknown_mode_is_refused_naming_the_valid_ones(tmp_path, bundle_dir):
    with pytest.raises(UsageError, match="turbo: unknown; expected some of downsample, patch, fast, fast-all-levels, fast-3, fast-global, magnet"):
        benchmark(tmp_path / "absent", tmp_path / "out", model=ModelSettings(model=bundle_dir), modes=["magnet", "turbo"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sizes", [[0], [-512], [512, 0], [1.5], [True], [1 << 30]])
def test_scaling_sizes_that_are_not_positive_pixels_are_refused(tmp_path, bundle_dir, sizes):
    with pytest.raises(UsageError, match="--sizes"):
        benchmark(None, tmp_path / "out", model=ModelSettings(model=bundle_dir), modes=[], sizes=sizes)
    assert not (tmp_path / "out").exists()


def test_method_fields_in_the_shared_settings_are_refused_not_overridden(tmp_path, bundle_dir):
    with pytest.raises(UsageError, match="mode, points are set by each of --modes"):
        benchmark(None, tmp_path / "out", model=ModelSettings(model=bundle_dir), modes=[], sizes=[],
                  inference=InferenceSettings(mode="patch", points=0.5))


@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, bundle_dir, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("in the way")
    output = {"file": blocker, "under-file": blocker / "out", "proc": Path("/proc/magnet-bench-out")}[where]
    if where == "proc" and not sys.platform.startswith("linux"):
        pytest.skip("/proc is Linux's")
    with pytest.raises(OutputError, match="cannot create the folder") as error:
        benchmark("synth:1:1:4096", output, model=ModelSettings(model=bundle_dir), sizes=[4096], inference=CPU)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == [blocker]  # nothing rendered, nothing written


def test_no_modes_reads_renders_and_times_no_dataset(tmp_path, bundle_dir, monkeypatch):
    # The default (full) preset would render four 4096^2 scenes; with no modes none is touched, and
    # the limit and peer, which run on the dataset, are skipped with it.
    def no_dataset(*args):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(bench, "dataset_pairs", no_dataset)
    report = benchmark(None, tmp_path / "out", model=ModelSettings(model=bundle_dir), modes=[], sizes=[96],
                       inference=CPU, run=QUIET)
    assert report.images == 0 and report.data is None and report.modes == []
    assert report.limit is None and report.peer is None
    assert [row["size"] for row in report.scaling] == [96] and report.scaling[0]["peak_rss_mb"] > 50
    assert [Path(p).name for p in report.plots] == ["scaling.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "work").iterdir()) == ["scaling", "scaling_96"]
    assert "No dataset" in markdown(report) and "| mode |" not in markdown(report)


def test_a_child_reports_its_own_peak_memory_not_an_earlier_childs():
    # Each child imports torch (~400 MB resident, less when shared-library pages are reclaimed), so the
    # difference is compared, with room for that noise; a peak carried over from the first child would
    # make it zero or less.
    # 1600 MB against a > 800 MB difference: on a loaded machine the small child's baseline was seen
    # 400 MB above its usual (796 against ~400 MB), which the old 800 / 400 margin could not absorb.
    big = run_measured("allocate", touch_megabytes, 1600)
    small = run_measured("allocate", touch_megabytes, 1)
    assert big.value == 1600 and small.value == 1
    assert big.peak_rss_mb - small.peak_rss_mb > 800


def test_a_child_does_not_report_the_memory_its_parent_held():
    # Linux keeps ru_maxrss across the exec of a spawned child, so a child measured by it reports at least
    # the parent's RSS at fork: a benchmark process holding scored masks made every small run look big.
    held = b"\x01" * (1500 << 20)
    small = run_measured("allocate", touch_megabytes, 1)
    assert len(held) >> 20 == 1500 and small.value == 1
    assert small.peak_rss_mb < 1200, small.peak_rss_mb


def test_a_user_error_in_a_child_comes_back_as_one_line_of_its_own_class():
    with pytest.raises(InputError, match=r"^segment x.png \(magnet\): x.png: not an image$"):
        run_measured("segment x.png (magnet)", refuse_input, "x.png")


def test_a_child_that_dies_without_answering_is_reported_not_fatal():
    with pytest.raises(MagnetError, match="crash failed: the process exited with code 3"):
        run_measured("crash", exit_without_answer, 3)


def test_variants_cover_the_papers_table():
    assert {"downsample", "patch", "fast", "magnet"} <= set(VARIANTS)
    assert VARIANTS["magnet-points-0.75"].settings.points == 0.75
    assert VARIANTS["magnet-global"].settings.selection == Selection.global_
    assert VARIANTS["magnet-paper-k"].settings.points == 65536


@pytest.mark.slow
def test_quick_benchmark_of_the_default_bundle_runs_every_measurement(tmp_path):
    """The quick benchmark as a user runs it (issue 4 asks it to finish in under 3 minutes on the 2-core
    CPU machine; the time is printed, not asserted: timings are no test's business)."""
    import time

    start = time.perf_counter()
    report = benchmark(None, tmp_path / "quick", quick=True, inference=CPU, run=QUIET).to_dict()
    print(f"benchmark --quick took {time.perf_counter() - start:.0f} s")
    assert [row["mode"] for row in report["modes"]] == list(VARIANTS)
    assert all(0 <= row["miou"] <= 1 and row["windows_per_image"] >= 1 for row in report["modes"])
    assert [row["size"] for row in report["scaling"]] == [512, 1024, 2048]
    assert report["limit"]["model_only_s"] > 0 and report["selection_difference"] is not None
    assert len(report["plots"]) == 2 and all(Path(p).is_file() for p in report["plots"])


def test_mode_rows_report_throughput_device_busy_share_and_precision():
    from magnet_cli.bench import BenchmarkReport, _mode_row
    from magnet_cli.evaluation import Scores

    runs = [
        {"seconds": 10.0, "windows": 100, "peak_rss_mb": 700.0, "peak_gpu_mb": 900.0, "segmenter_seconds": 2.0,
         "refiner_seconds": 5.0, "selection_seconds": 1.0, "precision": "bf16", "refined_per_level": [10, 40]},
        {"seconds": 30.0, "windows": 300, "peak_rss_mb": 710.0, "peak_gpu_mb": 1200.0, "segmenter_seconds": 6.0,
         "refiner_seconds": 15.0, "selection_seconds": 3.0, "precision": "bf16", "refined_per_level": [20, 130]},
    ]
    row = _mode_row(VARIANTS["fast"], Scores.empty(default_classes(3)), runs)
    assert (row["windows_per_second"], row["device_busy"], row["peak_gpu_mb"], row["precision"]) == (10.0, 0.8, 1200.0, "bf16")
    assert (row["windows_per_image"], row["refined_per_image"]) == (200.0, 100.0)
    report = BenchmarkReport("test machine", "tiny", "synth", 2)
    report.modes.append(row)
    assert "| 1200.0 | 200.0 | 100.0 | 10.0 | 80.00 | bf16 |" in markdown(report)


def test_a_variant_sets_precision_only_where_it_names_one():
    base = InferenceSettings(device="cpu", precision="fp32")
    assert VARIANTS["magnet-bf16"].run_with(base).precision == "bf16"
    assert VARIANTS["magnet-fp32"].run_with(InferenceSettings(device="cpu")).precision == "fp32"  # not `auto`
    assert VARIANTS["magnet"].run_with(base).precision == "fp32"  # the caller's --precision holds
    assert VARIANTS["fast-3"].run_with(base).fast_patches == 3
    assert VARIANTS["fast-global"].run_with(base).selection == Selection.global_


def test_chart_labels_of_modes_with_about_the_same_time_and_miou_do_not_overlap():
    """Session 13's chart drew magnet, magnet-global, magnet-bf16 and magnet-points-0.75 on top of one
    another; each label now moves until its box is clear of those placed before it."""
    from magnet_cli.bench import label_offsets

    size = 8.0
    anchors = [(100.0, 200.0), (104.0, 200.5), (108.0, 199.5), (110.0, 200.0), (300.0, 50.0)]
    labels = ["magnet", "magnet-global", "magnet-bf16", "magnet-points-0.75", "patch"]
    offsets = label_offsets(anchors, labels, size)
    boxes = [(x + dx, y + dy, x + dx + 0.6 * size * len(label), y + dy + 1.25 * size)
             for (x, y), (dx, dy), label in zip(anchors, offsets, labels)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    assert offsets[0] == offsets[-1] == (5.0, 4.0)  # a label with room stays where it always was


def test_the_pareto_front_keeps_only_modes_nothing_beats_on_time_and_miou():
    from magnet_cli.bench import pareto_front

    rows = [{"mode": m, "seconds_per_image": s, "miou": q} for m, s, q in
            [("patch", 2, 0.70), ("fast", 9, 0.85), ("slow-bad", 20, 0.80), ("magnet", 21, 0.92), ("tie", 21, 0.90)]]
    assert [r["mode"] for r in pareto_front(rows)] == ["patch", "fast", "magnet"]


def test_benchmark_runs_a_bring_your_own_onnx_segmenter_with_its_contract(tmp_path, bundle_dir):
    # Issue 13 item 2: --segmenter, --classes, --mean/--std and --refiner reach every measured child.
    pytest.importorskip("onnxruntime")
    from magnet_cli.models.bundle import load_bundle
    from magnet_cli.models.sources.onnx import export_onnx

    onnx = export_onnx(load_bundle(bundle_dir).segmenter.module, tmp_path / "mine.onnx", (64, 64))
    model = ModelSettings(segmenter=str(onnx), classes=str(NUM_CLASSES), mean=(0.5,) * 3, std=(0.25,) * 3,
                          refiner=bundle_dir / "refiner.pt")
    data = blocky_dataset(tmp_path / "data", count=1)
    report = benchmark(data, tmp_path / "out", model=model, modes=["patch", "magnet"], sizes=[], slide_size=0, inference=CPU,
                       peer=False, limit=False, run=QUIET)
    assert report.model == "mine" and [row["mode"] for row in report.modes] == ["patch", "magnet"]
    masks = tmp_path / "out" / "work" / "masks"
    record = json.loads((masks / "magnet" / "img0.zarr" / "zarr.json").read_text())
    assert '"mean": [0.5, 0.5, 0.5]' in json.dumps(record)  # the child segmented with the given contract


def test_slide_like_scene_is_run_with_and_without_background_and_tissue_labels_compared(tmp_path, monkeypatch):
    """The background row: a slide-like scene (one tissue section on glass; the lattice shrunk so that a
    1024^2 scene holds one) with --background none and auto, and the same scene without glass; the default
    bundle, whose classes are the synthetic scenes'."""
    from magnet_cli import synthetic

    monkeypatch.setattr(synthetic, "ISLAND_CELL", 1024)
    monkeypatch.setattr(synthetic, "ISLAND_WARP", 30.0)
    monkeypatch.setattr(bench, "SLIDE_PAIRS", 2)
    data = blocky_dataset(tmp_path / "data", count=1, size=64)
    report = benchmark(data, tmp_path / "out", modes=["patch"], sizes=[], slide_size=1024, inference=CPU, peer=False, limit=False, run=QUIET)
    bg = report.background
    assert bg is not None and bg["size"] == 1024 and abs(bg["blank_share"] - 0.75) < 0.1
    assert bg["windows"]["auto"] < bg["windows"]["none"] == bg["windows"]["plain"]
    assert bg["nodata_share"] > 0.4 and bg["tissue_pixels_written_as_nodata"] == 0
    assert bg["tissue_labels_equal"] == 1.0 and bg["miou"]["auto"] == bg["miou"]["none"]
    assert bg["auto_vs_none"] == pytest.approx(bg["seconds"]["auto"] / bg["seconds"]["none"], abs=1e-3)
    # Two back-to-back (without glass, auto) pairs: the ratio is their median, the seconds each side's.
    assert len(bg["pairs_s"]) == 2
    assert bg["auto_vs_plain"] == pytest.approx(statistics.median(a / p for p, a in bg["pairs_s"]), abs=2e-3)
    assert bg["seconds"]["auto"] == pytest.approx(statistics.median(a for _, a in bg["pairs_s"]), abs=2e-3)
    assert "Blank regions" in markdown(report) and "`--background auto`" in markdown(report)
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text())["background"]["size"] == 1024
