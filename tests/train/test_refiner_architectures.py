"""`train-refiner --refiner-arch`: a lighter refiner trains, saves, loads and runs through `segment --model`;
an unknown name is one red line and exit 2."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.io.labels import read_labels
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.refiner import LiteRefiner

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_a_lite_refiner_trains_saves_loads_and_segments(dataset_dir, segmenter_bundle, tmp_path):
    out = tmp_path / "lite"
    trained = invoke("train-refiner", dataset_dir, "--model", segmenter_bundle, "-o", out, "--refiner-arch", "lite",
                     "--epochs", 1, "--steps", 2, "--batch-size", 2, "--crop", 32, "--no-progress")
    assert trained.exit_code == 0, trained.output
    bundle = load_bundle(out)
    assert isinstance(bundle.refiner, LiteRefiner)
    assert bundle.spec.refiner.architecture == "lite" and bundle.spec.training["refiner"]["architecture"] == "lite"
    shown = json.loads(invoke("info", "--model", out, "--json").output)
    assert shown["refiner"]["architecture"] == "lite"
    image = dataset_dir / "images" / sorted(p.name for p in (dataset_dir / "images").iterdir())[0]
    segmented = invoke("segment", image, "-o", tmp_path / "scene.zarr", "--model", out, "--mode", "magnet",
                       "--no-progress", "--device", "cpu", "--json")
    assert segmented.exit_code == 0, segmented.output
    assert read_labels(tmp_path / "scene.zarr").shape == (128, 128)


def test_an_unknown_refiner_arch_is_one_line_and_exit_2(dataset_dir, segmenter_bundle, tmp_path):
    result = runner.invoke(app, ["train-refiner", str(dataset_dir), "--model", str(segmenter_bundle), "-o",
                                 str(tmp_path / "out"), "--refiner-arch", "huge", "--no-progress"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--refiner-arch 'huge': expected one of reference, lite, half" in lines[0]
    assert not (tmp_path / "out").exists()
