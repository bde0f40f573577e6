"""`magnet train-segmenter` and `magnet train-refiner` end to end through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.models.bundle import load_bundle

from tests.test_cli import assert_clean_failure
from tests.train.conftest import INPUT

runner = CliRunner()
TINY = ["--epochs", "1", "--steps", "1", "--batch-size", "2", "--seed", "2", "--no-progress"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_train_segmenter_then_refiner_write_loadable_bundles(dataset_dir, tmp_path):
    # The CLI has no --architecture-options: the default small_unet at input 32 is still quick.
    seg = invoke("train-segmenter", dataset_dir, "-o", tmp_path / "seg", "--input-size", "32", *TINY, "--json")
    assert seg.exit_code == 0, seg.output
    summary = json.loads(seg.output)
    assert summary["epochs"] == 1 and len(summary["history"]) == 1
    assert load_bundle(tmp_path / "seg").refiner is None

    ref = invoke("train-refiner", dataset_dir, "--model", tmp_path / "seg", "-o", tmp_path / "ref", *TINY, "--ohem")
    assert ref.exit_code == 0, ref.output
    assert "magnet train-refiner" in ref.output
    bundle = load_bundle(tmp_path / "ref")
    assert bundle.refiner is not None and bundle.input_size == (32, 32)
    assert set(bundle.spec.training) == {"segmenter", "refiner"}

    again = invoke("train-refiner", dataset_dir, "--model", tmp_path / "seg", "-o", tmp_path / "ref", *TINY)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = invoke(
        "train-refiner", dataset_dir, "--model", tmp_path / "seg", "-o", tmp_path / "ref", *TINY[2:], "--epochs", "2", "--ohem",
        "--resume", "--json",
    )
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in json.loads(resumed.output)["history"]] == [1, 2]


def test_train_segmenter_on_synth_scenes_in_memory(tmp_path):
    result = invoke("train-segmenter", "synth:5:1:64", "-o", tmp_path / "seg", "--input-size", "32", *TINY)
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "seg").num_classes == 6


def test_train_refiner_needs_exactly_one_segmenter(dataset_dir, tmp_path):
    result = invoke("train-refiner", dataset_dir, "-o", tmp_path / "ref", *TINY)
    assert result.exit_code == 2 and "exactly one of --model" in result.output


def test_bad_dataset_is_one_red_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    result = invoke("train-segmenter", tmp_path, "-o", tmp_path / "out", *TINY)
    assert result.exit_code == 2 and "no images" in result.output


def test_train_refiner_resume_refuses_a_checkpoint_with_nan_weights(dataset_dir, segmenter_bundle, tmp_path):
    import torch

    from magnet_cli.train.common import CHECKPOINT

    out = tmp_path / "ref"
    assert invoke("train-refiner", dataset_dir, "--model", segmenter_bundle, "-o", out, *TINY).exit_code == 0
    checkpoint = torch.load(out / CHECKPOINT, weights_only=True)
    next(iter(checkpoint["model"].values())).fill_(float("nan"))
    torch.save(checkpoint, out / CHECKPOINT)
    bundle = (out / "refiner.pt").read_bytes()
    resumed = invoke("train-refiner", dataset_dir, "--model", segmenter_bundle, "-o", out, *TINY[2:], "--epochs", "2", "--resume")
    assert_clean_failure(resumed, "not finite", CHECKPOINT)
    assert (out / "refiner.pt").read_bytes() == bundle  # the bundle of the sound run is untouched


def test_train_refiner_runs_a_factory_only_with_trust_model(dataset_dir, tmp_path, monkeypatch):
    result = invoke("train-refiner", dataset_dir, "--segmenter", "os:_exit", "--classes", "6", "--input-size", "32",
                    "-o", tmp_path / "ref", *TINY)
    assert_clean_failure(result, "--trust-model", "os:_exit")
    assert not (tmp_path / "ref").exists()
    (tmp_path / "trusted_models.py").write_text(
        "from magnet_cli.models.builtin import SmallUNet\n"
        "def build(num_classes):\n    return SmallUNet(num_classes, widths=(8, 16))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    trusted = invoke("train-refiner", dataset_dir, "--segmenter", "trusted_models:build", "--classes", "6", "--input-size",
                     "32", "-o", tmp_path / "ref", *TINY, "--trust-model")
    assert trusted.exit_code == 0, trusted.output
    assert load_bundle(tmp_path / "ref", trust_model=True).spec.segmenter.factory == "trusted_models:build"


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_train_refiner_on_an_onnx_or_pt2_segmenter_writes_a_bundle_that_holds_it(dataset_dir, segmenter_bundle, tmp_path, suffix):
    import numpy as np
    import torch
    from skimage import io as skio

    pytest.importorskip("onnxruntime")
    module = load_bundle(segmenter_bundle).segmenter.module
    example = torch.rand(2, 3, INPUT, INPUT)
    exported = tmp_path / f"seg{suffix}"
    if suffix == ".onnx":
        torch.onnx.export(module, (example,), str(exported), dynamic_shapes=({0: "batch"},), verbose=False)
    else:
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), str(exported))
    trust = ["--trust-model"] if suffix == ".pt2" else []
    if trust:  # torch unpickles a .pt2: it is code, like a factory
        assert_clean_failure(invoke("train-refiner", dataset_dir, "--segmenter", exported, "-o", tmp_path / "no", *TINY), "--trust-model")
    result = invoke("train-refiner", dataset_dir, "--segmenter", exported, "-o", tmp_path / "ref", *TINY, *trust)
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "ref", trust_model=True)
    kind = "onnx" if suffix == ".onnx" else "export"
    assert getattr(bundle.spec.segmenter, kind) == exported.name and (tmp_path / "ref" / exported.name).is_file()
    assert bundle.refiner.segmenter_sha256 == bundle.segmenter.digest() == bundle.spec.segmenter.sha256
    image = tmp_path / "scene.png"
    skio.imsave(image, np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8), check_contrast=False)
    segmented = invoke("segment", image, "-o", tmp_path / "out.zarr", "--model", tmp_path / "ref", "--no-progress", *trust)
    assert segmented.exit_code == 0, segmented.output  # the bundle needs nothing else
