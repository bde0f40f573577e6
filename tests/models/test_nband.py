"""N-band models: a model states its input channels (ONNX graph, .pt2 signature, a built-in net's
in_channels, a bundle's bands) and the readers hand it exactly that many bands, chosen and ordered by
--bands (counted from 1). Checked with a model whose labels depend on band order: class k wins where
band k (of those it is fed) is the brightest, so feeding bands in another order gives other labels."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.errors import InputError
from magnet_cli.io.base import PixelNormalization, choose_bands, to_model_input
from magnet_cli.io.labels import read_labels
from magnet_cli.models.bundle import describe_bundle

from tests.test_cli import assert_clean_failure

pytest.importorskip("onnxruntime")
SIZE = 32
runner = CliRunner()
# Band values of the two halves of the 4-band test image: the brightest band is 1 on the left, 3 on the right.
LEFT, RIGHT = (200, 10, 60, 120), (10, 120, 200, 60)


class BrightestBand(torch.nn.Module):
    """Class k = channel k: logits 10 * x, so a pixel's label is the index of its brightest input channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1) * 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def export_onnx(channels: int, path: Path) -> Path:
    torch.onnx.export(BrightestBand(channels).eval(), (torch.rand(2, channels, SIZE, SIZE),), str(path),
                      input_names=["images"], output_names=["scores"], dynamic_shapes=({0: "batch"},), verbose=False)
    return path


def export_pt2(channels: int, path: Path) -> Path:
    program = torch.export.export(BrightestBand(channels).eval(), (torch.rand(2, channels, SIZE, SIZE),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4- and 8-channel models as ONNX and .pt2, a 4-band and a 3-band uint8 image, an 8-band uint16 GeoTIFF."""
    folder = tmp_path_factory.mktemp("nband")
    export_onnx(4, folder / "four.onnx")
    export_pt2(4, folder / "four.pt2")
    export_onnx(8, folder / "eight.onnx")
    four = np.zeros((64, 64, 4), np.uint8)
    four[:, :32], four[:, 32:] = LEFT, RIGHT
    tifffile.imwrite(folder / "four.tif", four, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(folder / "three.tif", four[..., :3], photometric="rgb")
    # 8 bands of 12-bit values in uint16, band b+1 brightest in the b-th horizontal stripe of 8 rows.
    eight = np.full((64, 48, 8), 300, np.uint16)
    for b in range(8):
        eight[b * 8 : (b + 1) * 8, :, b] = 4000
    tifffile.imwrite(folder / "eight.tif", eight, photometric="minisblack", planarconfig="contig",
                     extratags=[(33550, 12, 3, (10.0, 10.0, 0.0)), (33922, 12, 6, (0, 0, 0, 500000.0, 4000000.0, 0))])
    return folder


def segment(image: Path, output: Path, *options: object):
    args = ["segment", image, "-o", output, "--mode", "patch", "--no-progress", "--device", "cpu", *options]
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def halves(labels: np.ndarray) -> tuple[int, int]:
    """The one label of each half of the 4-band image."""
    left, right = np.unique(labels[:, :32]), np.unique(labels[:, 32:])
    assert left.size == 1 and right.size == 1, (left, right)
    return int(left[0]), int(right[0])


# --- the band choice, exactly -------------------------------------------------------------------------------
@pytest.mark.parametrize("count, bands, channels, expected", [
    (4, None, 4, [0, 1, 2, 3]),  # the model's channel count: bands 1..N
    (8, None, 8, list(range(8))),
    (4, (3, 2, 1, 0), 4, [3, 2, 1, 0]),  # --bands 4,3,2,1
    (8, (7, 0, 0, 2), 4, [7, 0, 0, 2]),  # any order, repeats allowed
    (1, None, 3, [0, 0, 0]),  # grey for an RGB model, replicated
    (2, None, 3, [0, 0, 0]),  # grey + alpha
    (4, None, 3, [0, 1, 2]),  # RGBA loses alpha
    (2, None, 1, [0]),  # grey + alpha for a 1-channel model
    (5, (4,), 3, [4, 4, 4]),  # one chosen band for an RGB model: grey
])
def test_bands_are_chosen_for_the_model(count, bands, channels, expected):
    assert choose_bands(count, PixelNormalization(bands, None, channels), "x.tif") == expected


@pytest.mark.parametrize("count, bands, channels, message", [
    (3, None, 4, "the image has 3 band(s) but the model takes 4 channel(s); choose 4 with --bands"),
    (8, (0, 1, 2, 3, 4), 4, "--bands names 5 band(s) but the model takes 4 channel(s)"),
    (8, (8, 0, 1, 2), 4, "--bands names band 9 but the image has 8 band(s)"),
    (5, None, 3, "the image has 5 band(s) but the model takes 3 channel(s)"),
])
def test_a_band_mismatch_names_the_file_and_the_problem(count, bands, channels, message):
    with pytest.raises(InputError) as error:
        choose_bands(count, PixelNormalization(bands, None, channels), "x.tif")
    assert str(error.value) == f"x.tif: {message}" or message in str(error.value)


def test_reader_output_has_the_chosen_bands_in_the_chosen_order():
    raw = np.arange(2 * 2 * 6, dtype=np.uint8).reshape(2, 2, 6)
    out = to_model_input(raw, PixelNormalization((5, 0, 3, 3), (0.0, 255.0), 4))
    assert out.shape == (4, 2, 2)
    assert torch.equal(out * 255, torch.from_numpy(raw[..., [5, 0, 3, 3]].astype(np.float32)).permute(2, 0, 1))


# --- through `segment`, the channel count read from the model file ----------------------------------------------
@pytest.mark.parametrize("model", ["four.onnx", "four.pt2"])
def test_a_4_band_model_is_fed_the_chosen_bands_in_the_chosen_order(folder, tmp_path, model):
    given = ["--segmenter", folder / model, "--trust-model"]
    results = {}
    for name, bands in (("default", []), ("1234", ["--bands", "1,2,3,4"]), ("4321", ["--bands", "4,3,2,1"]),
                        ("2143", ["--bands", "2,1,4,3"])):
        result = segment(folder / "four.tif", tmp_path / f"{name}.zarr", *given, *bands)
        assert result.exit_code == 0, result.output
        results[name] = halves(read_labels(tmp_path / f"{name}.zarr"))
    assert results["default"] == results["1234"] == (0, 2)  # no --bands: bands 1..4
    assert results["4321"] == (3, 1)  # reversed: band 1 (brightest on the left) is now channel 4
    assert results["2143"] == (1, 3)


def test_per_band_mean_and_std_reach_the_model(folder, tmp_path):
    # Left (200, 10, 60, 120) / 255; dividing band 4 by 0.1 makes it the brightest there.
    result = segment(folder / "four.tif", tmp_path / "s.zarr", "--segmenter", folder / "four.onnx",
                     "--mean", "0,0,0,0", "--std", "1,1,1,0.1")
    assert result.exit_code == 0, result.output
    assert halves(read_labels(tmp_path / "s.zarr")) == (3, 3)
    single = segment(folder / "four.tif", tmp_path / "one.zarr", "--segmenter", folder / "four.onnx", "--mean", "0.5", "--std", "0.5")
    assert single.exit_code == 0, single.output  # one value applies to every channel
    assert halves(read_labels(tmp_path / "one.zarr")) == (0, 2)


def test_mean_std_with_a_count_other_than_the_model_channels_is_a_usage_error(folder, tmp_path):
    result = segment(folder / "four.tif", tmp_path / "s.zarr", "--segmenter", folder / "four.onnx",
                     "--mean", "0,0,0", "--std", "1,1,1")
    assert_clean_failure(result, "--mean has 3 values but the segmenter takes 4 input channels")
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("image, bands, message", [
    ("three.tif", [], "three.tif: the image has 3 band(s) but the model takes 4 channel(s)"),
    ("eight.tif", ["--bands", "1,2,3,4,5"], "eight.tif: --bands names 5 band(s) but the model takes 4 channel(s)"),
    ("eight.tif", ["--bands", "9,1,2,3"], "eight.tif: --bands names band 9 but the image has 8 band(s)"),
])
def test_a_band_mismatch_is_one_red_line_and_exit_2(folder, tmp_path, image, bands, message):
    result = segment(folder / image, tmp_path / "o.zarr", "--segmenter", folder / "four.onnx", *bands)
    assert_clean_failure(result, message)
    assert not (tmp_path / "o.zarr").exists()


def test_a_mismatched_image_in_a_batch_fails_alone_with_exit_1(folder, tmp_path):
    out = tmp_path / "out"
    args = ["segment", folder / "four.tif", folder / "three.tif", "-o", out, "--segmenter", folder / "four.onnx",
            "--mode", "patch", "--no-progress", "--device", "cpu"]
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "three.tif: the image has 3 band(s) but the model takes 4 channel(s)" in result.output
    assert halves(read_labels(out / "four.zarr")) == (0, 2)


def test_an_8_band_16_bit_geotiff_goes_through_segment(folder, tmp_path):
    result = segment(folder / "eight.tif", tmp_path / "e.zarr", "--segmenter", folder / "eight.onnx",
                     "--geotiff", tmp_path / "e.tif", "--preview", tmp_path / "e.png")
    assert result.exit_code == 0, result.output
    labels = read_labels(tmp_path / "e.zarr")
    expected = np.repeat(np.arange(8), 8)[:, None] * np.ones((1, 48), np.int64)
    assert np.array_equal(labels, expected)  # every band reached the model, in order
    assert (tmp_path / "e.png").is_file() and (tmp_path / "e.tif").is_file()


# --- training: a 4-band set trains a 4-channel net, recorded in the bundle ---------------------------------------
@pytest.fixture
def four_band_dataset(tmp_path) -> Path:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.integers(0, 4000, (64, 64, 4), dtype=np.uint16)
        tifffile.imwrite(data / "images" / f"{i}.tif", image, photometric="minisblack", planarconfig="contig")
        tifffile.imwrite(data / "masks" / f"{i}.tif", (image[..., 3] > 2000).astype(np.uint8))
    return data


TINY = ["--epochs", "1", "--steps", "1", "--batch-size", "2", "--seed", "2", "--no-progress", "--input-size", "32"]


def test_train_segmenter_on_4_band_data_trains_a_4_channel_net_that_segment_reads_without_bands(four_band_dataset, tmp_path):
    out = tmp_path / "seg"
    result = runner.invoke(app, [str(a) for a in ["train-segmenter", four_band_dataset, "-o", out, *TINY,
                                                   "--mean", "0.5,0.5,0.5,0.5", "--std", "0.25"]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    spec = tomllib.loads((out / "model.toml").read_text())
    assert spec["segmenter"]["options"]["in_channels"] == 4
    assert describe_bundle(out)["input_channels"] == 4
    image = four_band_dataset / "images" / "0.tif"
    by_bundle = segment(image, tmp_path / "a.zarr", "--model", out)
    assert by_bundle.exit_code == 0, by_bundle.output
    reordered = segment(image, tmp_path / "b.zarr", "--model", out, "--bands", "1,2,3,4")
    assert reordered.exit_code == 0, reordered.output
    assert np.array_equal(read_labels(tmp_path / "a.zarr"), read_labels(tmp_path / "b.zarr"))
    three = segment(image, tmp_path / "c.zarr", "--model", out, "--bands", "1,2,3")
    assert_clean_failure(three, "--bands names 3 band(s) but the model takes 4 channel(s)")


def test_train_refiner_over_a_4_channel_onnx_model_then_segment_model_needs_no_bands(four_band_dataset, folder, tmp_path):
    out = tmp_path / "ref"
    args = ["train-refiner", four_band_dataset, "-o", out, "--segmenter", folder / "four.onnx", "--classes", "4",
            "--mean", "0.5", "--std", "0.25", *TINY[:-2]]
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert tomllib.loads((out / "model.toml").read_text())["mean"] == [0.5]
    assert describe_bundle(out)["input_channels"] == 4  # from the graph's header: the mean is one value for all
    image = four_band_dataset / "images" / "0.tif"
    by_bundle = runner.invoke(app, [str(a) for a in ["segment", image, "-o", tmp_path / "a.zarr", "--model", out,
                                                      "--no-progress", "--device", "cpu"]], catch_exceptions=False)
    assert by_bundle.exit_code == 0, by_bundle.output
    reversed_ = segment(four_band_dataset / "images" / "0.tif", tmp_path / "b.zarr", "--model", out, "--bands", "4,3,2,1")
    assert reversed_.exit_code == 0, reversed_.output
    assert not np.array_equal(read_labels(tmp_path / "a.zarr"), read_labels(tmp_path / "b.zarr"))


def test_benchmark_feeds_a_4_channel_model_the_chosen_bands(folder, tmp_path):
    from magnet_cli.bench import benchmark, load_model, make_engine, model_only_seconds
    from magnet_cli.settings import InferenceSettings, ModelSettings, RunSettings

    from tests.test_bench import blocky_dataset

    data = blocky_dataset(tmp_path / "data", count=1)  # RGB scenes: band 1 repeated makes a 4th channel
    model = ModelSettings(segmenter=str(folder / "four.onnx"))
    inference = InferenceSettings(device="cpu", bands=(1, 2, 3, 1))
    report = benchmark(data, tmp_path / "out", model=model, modes=["patch"], sizes=[], slide_size=0, inference=inference,
                       peer=False, limit=False, run=RunSettings(progress=False))
    assert [row["mode"] for row in report.modes] == ["patch"]
    # The model-only limit feeds the model windows of its own channel count.
    engine = make_engine(load_model(model), replace(inference, mode="patch"))
    assert model_only_seconds(engine, [2], 2, refine=False) > 0


def test_the_preview_thumbnail_shows_the_first_three_chosen_bands_or_one_as_grey():
    from magnet_cli.io.preview import _as_rgb_uint8

    five = np.arange(5, dtype=np.uint8)[None, None, :].repeat(2, 0).repeat(2, 1)
    assert _as_rgb_uint8(five)[0, 0].tolist() == [0, 1, 2]
    two = np.array([[[7, 9]]], np.uint8)
    assert _as_rgb_uint8(two)[0, 0].tolist() == [7, 7, 7]
