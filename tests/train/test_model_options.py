"""What the trainers are given about the model (a factory segmenter, --mean/--std/--classes, --bands,
--value-range) is what their bundle records, so that `segment --model OUT` needs nothing else."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.io.base import Box
from magnet_cli.io.labels import read_labels
from magnet_cli.train.dataset import load_dataset

from tests.conftest import random_rgb
from tests.test_cli import assert_clean_failure
from tests.train.conftest import INPUT

runner = CliRunner()
TINY = ["--epochs", "1", "--steps", "1", "--batch-size", "2", "--seed", "2", "--no-progress"]
MEAN, STD = "0.4,0.45,0.5", "0.2,0.25,0.3"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def factory(tmp_path, monkeypatch) -> str:
    """A module:factory whose weights depend on nothing but the class count (a seeded init)."""
    (tmp_path / "walk_models.py").write_text(
        "import torch\nfrom magnet_cli.models.builtin import SmallUNet\n"
        "def build(num_classes):\n    torch.manual_seed(0)\n    return SmallUNet(num_classes, widths=(8, 16))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "walk_models:build"


def model_toml(folder) -> dict:
    return tomllib.loads((folder / "model.toml").read_text())


def test_train_refiner_records_factory_mean_std_classes_and_segment_model_reproduces_them(dataset_dir, tmp_path, factory):
    out = tmp_path / "ref"
    given = ["--segmenter", factory, "--trust-model", "--classes", "6", "--input-size", str(INPUT), "--mean", MEAN, "--std", STD]
    result = invoke("train-refiner", dataset_dir, "-o", out, *given, *TINY)
    assert result.exit_code == 0, result.output
    spec = model_toml(out)
    assert spec["segmenter"]["factory"] == factory
    assert spec["mean"] == [0.4, 0.45, 0.5] and spec["std"] == [0.2, 0.25, 0.3]
    assert len(spec["classes"]) == 6 and spec["input_size"] == [INPUT, INPUT]

    image = tmp_path / "scene.png"
    from skimage import io as skio

    skio.imsave(image, random_rgb(96, 80, seed=3), check_contrast=False)
    by_bundle = invoke("segment", image, "-o", tmp_path / "a.zarr", "--model", out, "--trust-model", "--no-progress")
    assert by_bundle.exit_code == 0, by_bundle.output
    by_options = invoke("segment", image, "-o", tmp_path / "b.zarr", *given, "--refiner", out / "refiner.pt", "--no-progress")
    assert by_options.exit_code == 0, by_options.output
    without_stats = invoke("segment", image, "-o", tmp_path / "c.zarr", *given[:7], "--refiner", out / "refiner.pt", "--no-progress")
    assert without_stats.exit_code == 0, without_stats.output
    labels = read_labels(tmp_path / "a.zarr")
    assert np.array_equal(labels, read_labels(tmp_path / "b.zarr"))
    assert not np.array_equal(labels, read_labels(tmp_path / "c.zarr"))  # --mean/--std change the labels


@pytest.fixture
def five_band_dataset(tmp_path_factory):
    """One 5-band uint16 image holding 12-bit values, and its mask: it needs --bands to be read at all."""
    folder = tmp_path_factory.mktemp("five")
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    rgb = random_rgb(128, 128, seed=5).astype(np.uint16) * 16  # 0..4080
    bands = np.concatenate([rgb, rgb[..., :2] // 2], axis=2)
    tifffile.imwrite(folder / "images" / "a.tif", bands, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(folder / "masks" / "a.tif", (rgb[..., 0] // 700).astype(np.uint8))
    return folder


def test_dataset_reads_images_with_bands_and_value_range(five_band_dataset):
    raw = tifffile.imread(five_band_dataset / "images" / "a.tif")
    dataset = load_dataset(five_band_dataset, bands=(3, 2, 1), value_range=(0.0, 4095.0))
    window = dataset.read_image(0, Box(0, 0, 128, 128), (128, 128))
    expected = torch.from_numpy(raw[..., [2, 1, 0]].astype(np.float32) / 4095).permute(2, 0, 1)
    assert torch.allclose(window, expected)
    auto = load_dataset(five_band_dataset, bands=(3, 2, 1))  # auto: a stretch of these 12-bit values
    assert float(auto.read_image(0, Box(0, 0, 128, 128), (128, 128)).max()) == 1.0
    dtype = load_dataset(five_band_dataset, bands=(3, 2, 1), value_range="dtype")
    assert float(dtype.read_image(0, Box(0, 0, 128, 128), (128, 128)).max()) < 0.07
    with pytest.raises(Exception, match="--bands"):  # 5 bands need a choice, as in `segment`
        load_dataset(five_band_dataset).read_image(0, Box(0, 0, 128, 128), (32, 32))


def test_train_refiner_records_bands_and_value_range_and_segment_uses_them(five_band_dataset, segmenter_bundle, tmp_path):
    out = tmp_path / "ref"
    reading = ["--bands", "3,2,1", "--value-range", "dtype"]
    assert_clean_failure(invoke("train-refiner", five_band_dataset, "--model", segmenter_bundle, "-o", tmp_path / "no", *TINY), "--bands")
    result = invoke("train-refiner", five_band_dataset, "--model", segmenter_bundle, "-o", out, *reading, *TINY)
    assert result.exit_code == 0, result.output
    spec = model_toml(out)
    assert spec["bands"] == [3, 2, 1] and spec["value_range"] == "dtype"
    info = invoke("info", "--model", out, "--json")
    assert '"bands": [\n    3,\n    2,\n    1\n  ]' in info.output and '"value_range": "dtype"' in info.output

    image = five_band_dataset / "images" / "a.tif"
    # fp32: this barely trained model's labels move little with its input, less than bf16 rounds away
    fp32 = ["--precision", "fp32", "--no-progress"]
    by_bundle = invoke("segment", image, "-o", tmp_path / "a.zarr", "--model", out, *fp32)  # no --bands needed
    assert by_bundle.exit_code == 0, by_bundle.output
    by_options = invoke("segment", image, "-o", tmp_path / "b.zarr", "--model", out, *reading, *fp32)
    assert by_options.exit_code == 0, by_options.output
    assert np.array_equal(read_labels(tmp_path / "a.zarr"), read_labels(tmp_path / "b.zarr"))
    overridden = invoke("segment", image, "-o", tmp_path / "c.zarr", "--model", out, "--value-range", "0,4095", *fp32)
    assert overridden.exit_code == 0, overridden.output  # the option wins over the bundle: 16x brighter input
    assert not np.array_equal(read_labels(tmp_path / "a.zarr"), read_labels(tmp_path / "c.zarr"))


def test_train_segmenter_trains_a_factory_with_mean_std_and_records_them(dataset_dir, tmp_path, factory):
    out = tmp_path / "seg"
    refused = invoke("train-segmenter", dataset_dir, "-o", tmp_path / "no", "--segmenter", factory, "--input-size", "32", *TINY)
    assert_clean_failure(refused, "--trust-model")
    result = invoke("train-segmenter", dataset_dir, "-o", out, "--segmenter", factory, "--trust-model", "--input-size", "32",
                    "--mean", MEAN, "--std", STD, "--bands", "1,2,3", "--value-range", "0,255", *TINY)
    assert result.exit_code == 0, result.output
    spec = model_toml(out)
    assert spec["segmenter"]["factory"] == factory and "architecture" not in spec["segmenter"]
    assert spec["mean"] == [0.4, 0.45, 0.5] and spec["std"] == [0.2, 0.25, 0.3]
    assert spec["bands"] == [1, 2, 3] and spec["value_range"] == [0, 255]
    onnx = tmp_path / "seg.onnx"
    onnx.write_bytes(b"")
    assert_clean_failure(invoke("train-segmenter", dataset_dir, "-o", tmp_path / "x", "--segmenter", onnx, *TINY), "package.module:factory")
