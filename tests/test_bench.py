"""The benchmark harness: every variant is run, scored against the truth and reported."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from magnet_cli.bench import VARIANTS, benchmark, markdown
from magnet_cli.cli import app
from magnet_cli.errors import UsageError
from magnet_cli.evaluation import evaluate

from tests.conftest import NUM_CLASSES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


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


def test_each_variant_is_scored_on_its_own_masks(tmp_path, bundle_dir):
    data = blocky_dataset(tmp_path / "data")
    out = tmp_path / "out"
    report = benchmark(data, out, model=bundle_dir, variants=["downsample", "magnet"], sizes=[128], peer=False,
                       progress=False)
    assert [row["mode"] for row in report.modes] == ["downsample", "magnet"]
    for row in report.modes:
        rescored = evaluate([out / "work" / "masks" / row["mode"]], [data], model=bundle_dir, progress=False)
        assert row["miou"] == pytest.approx(rescored.total.miou, abs=1e-5)
        assert row["peak_rss_mb"] > 50
    # 128 px images, 64 px model input: downsample reads 1 window, MagNet 1 + 4.
    assert [row["windows_per_image"] for row in report.modes] == [1, 5]
    assert report.scaling[0]["size"] == 128 and report.scaling[0]["windows"] == 5
    assert report.limit is not None and report.limit["windows"] == 5 and report.limit["model_only_s"] > 0
    assert report.selection_difference is None  # magnet-global was not asked for
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["modes"] == report.modes
    assert "| magnet |" in (out / "benchmark.md").read_text()
    for plot in report.plots:
        assert Path(plot).read_bytes()[:8] == PNG_SIGNATURE
    assert len(report.plots) == 2


def test_markdown_names_every_mode_and_the_selection_difference(tmp_path, bundle_dir):
    data = blocky_dataset(tmp_path / "data", count=1, size=64)
    report = benchmark(data, tmp_path / "out", model=bundle_dir, variants=["magnet", "magnet-global"], sizes=[],
                       peer=False, limit=False, progress=False)
    text = markdown(report)
    assert "| magnet-global |" in text and "Whole-level minus per-window" in text
    by_mode = {row["mode"]: row["miou"] for row in report.modes}
    assert report.selection_difference == pytest.approx(by_mode["magnet-global"] - by_mode["magnet"], abs=2e-5)


def test_unknown_variant_is_refused_before_any_work(tmp_path, bundle_dir):
    with pytest.raises(UsageError, match="unknown"):
        benchmark(tmp_path / "absent", tmp_path / "out", model=bundle_dir, variants=["magnet", "turbo"], progress=False)
    result = runner.invoke(app, ["benchmark", str(tmp_path / "absent"), "--model", str(bundle_dir), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such dataset folder" in result.output


def test_scaling_alone_reads_no_dataset(tmp_path, bundle_dir):
    report = benchmark(tmp_path / "absent", tmp_path / "out", model=bundle_dir, variants=[], sizes=[96], peer=False,
                       limit=False, progress=False)
    assert report.images == 0 and report.modes == [] and report.limit is None
    assert [row["size"] for row in report.scaling] == [96] and report.scaling[0]["peak_rss_mb"] > 50
    assert [Path(p).name for p in report.plots] == ["scaling.png"]


def test_variants_cover_the_papers_table():
    assert {"downsample", "patch", "fast", "magnet"} <= set(VARIANTS)
    assert VARIANTS["magnet-all-points"].points == 1.0 and VARIANTS["magnet-global"].selection == "global"


@pytest.mark.slow
def test_quick_benchmark_of_the_default_bundle_runs_every_measurement(tmp_path):
    """`magnet benchmark --quick` as a user runs it (issue 4 asks it to finish in under 3 minutes on the
    2-core CPU machine; the time is printed, not asserted: timings are no test's business)."""
    import time

    start = time.perf_counter()
    result = runner.invoke(app, ["benchmark", "--quick", "-o", str(tmp_path / "quick"), "--no-progress", "--json"])
    print(f"benchmark --quick took {time.perf_counter() - start:.0f} s")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [row["mode"] for row in report["modes"]] == list(VARIANTS)
    assert all(0 <= row["miou"] <= 1 and row["windows_per_image"] >= 1 for row in report["modes"])
    assert [row["size"] for row in report["scaling"]] == [512, 1024, 2048]
    assert report["limit"]["model_only_s"] > 0 and report["selection_difference"] is not None
    assert len(report["plots"]) == 2 and all(Path(p).is_file() for p in report["plots"])
