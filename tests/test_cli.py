"""End-to-end `magnet segment` and `magnet info` through the CLI on small generated inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from skimage import io as skio
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.io.labels import read_labels
from magnet_cli.models.refiner import Refiner, save_refiner

from tests.conftest import NUM_CLASSES, random_rgb

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def segment(bundle_dir: Path, *args: str):
    return invoke("segment", *args, "--model", bundle_dir, "--no-progress", "--device", "cpu")


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    skio.imsave(path, random_rgb(150, 200), check_contrast=False)
    return path


@pytest.fixture
def pyramid_tiff(tmp_path) -> Path:
    path = tmp_path / "slide.tif"
    image = random_rgb(384, 320, seed=2)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), subifds=1, photometric="rgb")
        tif.write(image[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb")
    return path


def assert_label_image(output: Path, height: int, width: int) -> np.ndarray:
    labels = read_labels(output)
    assert labels.shape == (height, width)
    assert labels.max() < NUM_CLASSES
    return labels


def test_segment_png_writes_a_label_image_and_a_json_summary(bundle_dir, png, tmp_path):
    out = tmp_path / "scene.zarr"
    result = segment(bundle_dir, png, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary[0]["height"] == 150 and summary[0]["width"] == 200 and summary[0]["windows"] > 1
    assert summary[0]["refined_per_level"] == summary[0]["windows_per_level"]  # MagNet refines every window
    assert_label_image(out, 150, 200)
    attributes = zarr.open_group(str(out), mode="r").attrs.asdict()
    assert attributes["ome"]["version"] == "0.5"
    assert [c["label-value"] for c in attributes["ome"]["image-label"]["colors"]] == list(range(NUM_CLASSES))


def test_segment_json_counts_the_windows_fast_refined(bundle_dir, png, tmp_path):
    result = segment(bundle_dir, png, "-o", tmp_path / "fast.zarr", "--mode", "fast", "--fast-patches", "1", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)[0]
    walked, refined = record["windows_per_level"], record["refined_per_level"]
    assert walked[-1] > 1 and refined[:-1] == walked[:-1]  # coarse levels in full
    assert refined[-1] == 1  # --fast-patches 1 on the finest level


def test_segment_pyramidal_tiff_with_every_output_option(bundle_dir, pyramid_tiff, tmp_path):
    out, preview = tmp_path / "slide.zarr", tmp_path / "slide.png"
    result = segment(
        bundle_dir, pyramid_tiff, "-o", out, "--write-probabilities", "--write-uncertainty", "--preview", preview,
        "--levels", "3", "--points", "0.3", "--batch-size", "3",
    )
    assert result.exit_code == 0, result.output
    labels = assert_label_image(out, 384, 320)
    group = zarr.open_group(str(out), mode="r")
    probabilities = np.asarray(group["probabilities/0"][:])
    assert probabilities.shape == (NUM_CLASSES, 384, 320)
    # The stored labels are the argmax of the stored (quantised) probabilities, up to quantisation ties.
    assert (probabilities.argmax(0) == labels).mean() > 0.95
    assert group["uncertainty/0"].shape == (384, 320)
    shown = skio.imread(preview)
    assert shown.shape[0] > 384 and shown.shape[1] == 320  # the image, and the legend below it


@pytest.mark.parametrize("mode", ["magnet", "fast", "patch", "downsample"])
def test_every_mode_runs_end_to_end(bundle_dir, png, tmp_path, mode):
    out = tmp_path / f"{mode}.zarr"
    result = segment(bundle_dir, png, "-o", out, "--mode", mode, "--selection", "global" if mode == "fast" else "window")
    assert result.exit_code == 0, result.output
    assert_label_image(out, 150, 200)


def test_zarr_and_ome_zarr_inputs_and_zarr_format_2_output(bundle_dir, tmp_path):
    image = random_rgb(130, 170, seed=4)
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), data=image, chunks=(64, 64, 3))
    result = segment(bundle_dir, plain, "-o", tmp_path / "a.zarr", "--zarr-format", "2")
    assert result.exit_code == 0, result.output
    assert_label_image(tmp_path / "a.zarr", 130, 170)
    assert "multiscales" in zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs
    # The output of one run is itself an OME-Zarr multiscale image: segmenting it must work too.
    labels_as_image = tmp_path / "a.zarr"
    result = segment(bundle_dir, labels_as_image, "-o", tmp_path / "b.zarr")
    assert result.exit_code == 0, result.output
    assert_label_image(tmp_path / "b.zarr", 130, 170)


def test_folder_input_segments_every_image(bundle_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        skio.imsave(folder / f"tile{i}.png", random_rgb(70 + i, 90, seed=i), check_contrast=False)
    result = segment(bundle_dir, folder, "-o", tmp_path / "masks", "--preview", tmp_path / "previews")
    assert result.exit_code == 0, result.output
    assert_label_image(tmp_path / "masks" / "tile0.zarr", 70, 90)
    assert_label_image(tmp_path / "masks" / "tile1.zarr", 71, 90)
    assert (tmp_path / "previews" / "tile1.png").is_file()


def test_results_are_identical_across_runs(bundle_dir, png, tmp_path):
    for name in ("one", "two"):
        assert segment(bundle_dir, png, "-o", tmp_path / f"{name}.zarr").exit_code == 0
    assert np.array_equal(read_labels(tmp_path / "one.zarr"), read_labels(tmp_path / "two.zarr"))


def test_bring_your_own_torchscript_segmenter_and_reference_refiner(tmp_path, png):
    from tests.conftest import tiny_bundle

    bundle = tiny_bundle(input_size=32)
    scripted = tmp_path / "seg.ts"
    torch.jit.script(bundle.segmenter.module).save(str(scripted))
    reference = tmp_path / "refiner.pth"
    torch.save(Refiner(NUM_CLASSES).state_dict(), reference)  # a bare state dict, as the reference saves
    out = tmp_path / "byo.zarr"
    result = invoke(
        "segment", png, "-o", out, "--segmenter", scripted, "--classes", str(NUM_CLASSES), "--input-size", "32x32",
        "--refiner", reference, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert_label_image(out, 150, 200)


def test_info_reports_size_levels_and_dtype(pyramid_tiff):
    result = invoke("info", pyramid_tiff, "--json")
    assert result.exit_code == 0, result.output
    details = json.loads(result.output)
    assert (details["height"], details["width"]) == (384, 320)
    assert len(details["levels"]) == 2
    assert "uint8" in str(details["dtype"])


def test_geotiff_input_keeps_its_georeference(bundle_dir, tmp_path):
    path = tmp_path / "geo.tif"
    extratags = [(33550, "d", 3, (0.5, 0.5, 0.0), True), (33922, "d", 6, (0, 0, 0, 500000.0, 4100000.0, 0), True)]
    tifffile.imwrite(path, random_rgb(96, 96), photometric="rgb", extratags=extratags)
    out, geotiff = tmp_path / "geo.zarr", tmp_path / "mask.tif"
    result = segment(bundle_dir, path, "-o", out, "--geotiff", geotiff)
    assert result.exit_code == 0, result.output
    georeference = zarr.open_group(str(out), mode="r").attrs["magnet"]["georeference"]
    assert "500000.0" in json.dumps(georeference) and "0.5" in json.dumps(georeference)
    with tifffile.TiffFile(geotiff) as tif:
        assert tif.pages[0].tags["ModelTiepointTag"].value[3] == 500000.0
        assert np.array_equal(tif.asarray(), read_labels(out))
    assert "warning" not in result.output


def test_geotiff_of_an_input_without_georeferencing_warns_that_it_is_in_pixel_space(bundle_dir, png, tmp_path):
    result = segment(bundle_dir, png, "-o", tmp_path / "scene.zarr", "--geotiff", tmp_path / "mask.tif")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert lines == [f"warning: {png} has no georeferencing: the GeoTIFF is in pixel space"]
    assert (tmp_path / "mask.tif").is_file()


def test_geotiff_without_rasterio_is_a_tiled_geotiff_and_names_the_extra(bundle_dir, png, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rasterio", None)  # `import rasterio` raises ImportError
    geotiff = tmp_path / "mask.tif"
    result = segment(bundle_dir, png, "-o", tmp_path / "scene.zarr", "--geotiff", geotiff)
    assert result.exit_code == 0, result.output
    assert "pip install 'magnet-cli[gis]'" in result.output
    with tifffile.TiffFile(geotiff) as tif:  # one 512-px tile: no overviews needed
        assert tif.pages[0].is_tiled and tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        assert np.array_equal(tif.asarray(), read_labels(tmp_path / "scene.zarr"))


def test_tables_to_a_file_or_pipe_are_not_cut_to_80_columns(bundle_dir, tmp_path):
    # CliRunner's stdout is not a terminal, like a SLURM log: each row must name its whole files.
    folder = tmp_path / ("a_folder_with_a_long_name_" * 3)
    folder.mkdir()
    png = folder / ("tile_of_a_survey_flown_in_2026_over_the_valley_" * 2 + "r12c7.png")
    skio.imsave(png, random_rgb(64, 64), check_contrast=False)
    out = tmp_path / "mask_of_the_long_named_tile.zarr"
    result = segment(bundle_dir, png, "-o", out)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if str(png) in line)
    assert str(out) in row and "ok" in row
    info = invoke("info", png)
    assert info.exit_code == 0 and str(png) in info.output


# --- bad input: one line, exit code 2, nothing that looks finished ------------------------------
def assert_clean_failure(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "Traceback" not in message and message.count("\n") == 0, message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_input(bundle_dir, tmp_path):
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, tmp_path / "nope.tif", "-o", out), "nope.tif")
    assert not out.exists()


def test_not_an_image(bundle_dir, tmp_path):
    bogus = tmp_path / "notes.tif"
    bogus.write_text("this is not a tiff")
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, bogus, "-o", out), "notes.tif")
    assert not out.exists()


def test_truncated_tiff(bundle_dir, tmp_path, pyramid_tiff):
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(pyramid_tiff.read_bytes()[: pyramid_tiff.stat().st_size // 3])
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, truncated, "-o", out), "truncated.tif")
    assert not out.exists() and not list(tmp_path.glob("o.zarr*"))


def test_zero_size_image(bundle_dir, tmp_path):
    empty = tmp_path / "empty.zarr"
    zarr.create_array(str(empty), shape=(0, 10, 3), dtype="uint8")
    assert_clean_failure(segment(bundle_dir, empty, "-o", tmp_path / "o.zarr"), "empty.zarr")


def test_unsupported_dtype(bundle_dir, tmp_path):
    weird = tmp_path / "complex.zarr"
    zarr.create_array(str(weird), data=np.zeros((20, 20), dtype=np.complex64))
    assert_clean_failure(segment(bundle_dir, weird, "-o", tmp_path / "o.zarr"), "complex.zarr")


def test_too_many_bands_without_bands_option(bundle_dir, tmp_path):
    multi = tmp_path / "bands.tif"
    tifffile.imwrite(multi, np.zeros((7, 40, 40), np.uint16), photometric="minisblack", planarconfig="separate")
    assert_clean_failure(segment(bundle_dir, multi, "-o", tmp_path / "o.zarr"), "--bands")
    assert segment(bundle_dir, multi, "-o", tmp_path / "o.zarr", "--bands", "3,2,1").exit_code == 0


def test_refiner_class_count_mismatch(bundle_dir, png, tmp_path):
    wrong = tmp_path / "wrong.pt"
    save_refiner(Refiner(NUM_CLASSES + 2), wrong)
    assert_clean_failure(segment(bundle_dir, png, "-o", tmp_path / "o.zarr", "--refiner", wrong), "classes")


def test_existing_output_needs_overwrite(bundle_dir, png, tmp_path):
    out = tmp_path / "o.zarr"
    assert segment(bundle_dir, png, "-o", out).exit_code == 0
    assert_clean_failure(segment(bundle_dir, png, "-o", out), "--overwrite")
    assert segment(bundle_dir, png, "-o", out, "--overwrite").exit_code == 0
    preview = tmp_path / "p.png"
    preview.write_bytes(b"keep me")
    assert_clean_failure(segment(bundle_dir, png, "-o", tmp_path / "new.zarr", "--preview", preview), "p.png")
    assert preview.read_bytes() == b"keep me" and not (tmp_path / "new.zarr").exists()


def test_unwritable_output_path(bundle_dir, png, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_failure(segment(bundle_dir, png, "-o", blocker / "o.zarr"), str(blocker), "a file is in the way")


def test_interrupt_keeps_a_partial_output_that_resume_finishes(bundle_dir, png, tmp_path, monkeypatch):
    from magnet_cli import pipeline
    from magnet_cli.io.labels import magnet_marker, read_labels

    original = pipeline.Engine.run

    def interrupted(self, source, sink, progress=None, **kwargs):
        def sink_then_interrupt(region, probabilities):
            sink(region, probabilities)
            raise KeyboardInterrupt

        return original(self, source, sink_then_interrupt, progress, **kwargs)

    monkeypatch.setattr(pipeline.Engine, "run", interrupted)
    out = tmp_path / "o.zarr"
    result = segment(bundle_dir, png, "-o", out)
    assert result.exit_code == 130 and "--resume" in result.output
    assert not out.exists()
    leftovers = list(tmp_path.glob("o.zarr.partial-*"))
    assert len(leftovers) == 1 and magnet_marker(leftovers[0])["state"] == "partial"

    monkeypatch.setattr(pipeline.Engine, "run", original)
    again = segment(bundle_dir, png, "-o", out)
    assert again.exit_code == 2 and "--resume" in again.output and not out.exists()
    assert segment(bundle_dir, png, "-o", out, "--resume").exit_code == 0
    assert not list(tmp_path.glob("o.zarr.*"))
    fresh = tmp_path / "fresh.zarr"
    assert segment(bundle_dir, png, "-o", fresh).exit_code == 0
    assert np.array_equal(read_labels(out), read_labels(fresh))


def test_bad_option_values(bundle_dir, png, tmp_path):
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, png, "-o", out, "--levels", "512,256"), "--levels")
    assert_clean_failure(segment(bundle_dir, png, "-o", out, "--points", "-3"), "--points")
    assert_clean_failure(segment(bundle_dir, png, "-o", out, "--smooth-kernel", "16"), "--smooth-kernel")
    assert_clean_failure(segment(bundle_dir, png, "-o", out, "--mode", "turbo"), "--mode")
    assert not out.exists()


def test_striped_tiff_without_pyramid_gets_a_temporary_one_that_is_removed(bundle_dir, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = tmp_path / "striped.tif"
    tifffile.imwrite(path, random_rgb(520, 400, seed=8), photometric="rgb", rowsperstrip=16)
    calls = []
    from magnet_cli.io import pyramid_cache

    original = pyramid_cache.CachedPyramidSource.read_level

    def spy(self, level, *box):
        calls.append(level)
        return original(self, level, *box)

    monkeypatch.setattr(pyramid_cache.CachedPyramidSource, "read_level", spy)
    result = segment(bundle_dir, path, "-o", tmp_path / "s.zarr")
    assert result.exit_code == 0, result.output
    assert_label_image(tmp_path / "s.zarr", 520, 400)
    assert max(calls) > 0  # coarse windows read a built level, not full resolution
    assert list(scratch.iterdir()) == []  # the temporary pyramid is gone


def test_segmenter_factory_from_a_module(tmp_path, png, monkeypatch):
    module = tmp_path / "my_models.py"
    module.write_text(
        "from magnet_cli.models.builtin import SmallUNet\n"
        "def build(num_classes):\n    return SmallUNet(num_classes, widths=(8, 16))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "factory.zarr"
    refused = invoke("segment", png, "-o", out, "--segmenter", "my_models:build", "--classes", "3",
                     "--input-size", "32", "--mode", "patch", "--no-progress")
    assert_clean_failure(refused, "--trust-model", "my_models:build")  # a factory is code: opt in
    result = invoke("segment", png, "-o", out, "--segmenter", "my_models:build", "--classes", "3",
                    "--input-size", "32", "--mode", "patch", "--no-progress", "--trust-model")
    assert result.exit_code == 0, result.output
    assert_label_image(out, 150, 200)
    missing = invoke("segment", png, "-o", tmp_path / "x.zarr", "--segmenter", "my_models:build",
                     "--input-size", "32", "--mode", "patch", "--trust-model")
    assert_clean_failure(missing, "--classes")


def test_evaluate_takes_several_truths_after_one_flag(tmp_path):
    masks = []
    for name in ("a", "b", "ta", "tb"):
        path = tmp_path / f"{name}.png"
        skio.imsave(path, (np.arange(32 * 32).reshape(32, 32) % 3).astype(np.uint8), check_contrast=False)
        masks.append(path)
    result = invoke("evaluate", masks[0], masks[1], "--truth", masks[2], masks[3], "--classes", "3", "--json", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert len(summary["images"]) == 2 and summary["miou"] == 1.0
    assert [Path(p["truth"]).name for p in summary["images"]] == ["ta.png", "tb.png"]


def test_run_metadata_records_every_setting_that_shaped_the_labels(bundle_dir, png, tmp_path):
    out = tmp_path / "o.zarr"
    result = segment(bundle_dir, png, "-o", out, "--points", "0.3", "--smooth-kernel", "5", "--levels", "2",
                     "--selection", "global", "--fast-patches", "2", "--fast-levels", "all")
    assert result.exit_code == 0, result.output
    record = zarr.open_group(str(out), mode="r").attrs["magnet"]
    assert record["points"] == 0.3 and record["smooth_kernel"] == 5 and record["selection"] == "global"
    assert record["mode"] == "magnet" and record["fast_patches"] == 2 and len(record["levels"]) == 2
    assert record["fast_levels"] == "all"
    assert record["model"] == "tiny" and record["input_size"] == [64, 64] and record["refiner"] is True
    # The bundle's defaults are recorded as resolved values, not as "unset".
    default = tmp_path / "d.zarr"
    assert segment(bundle_dir, png, "-o", default).exit_code == 0
    record = zarr.open_group(str(default), mode="r").attrs["magnet"]
    assert record["points"] == 0.5 and record["smooth_kernel"] == 3


def test_bands_count_from_one_as_in_gdal(bundle):
    from magnet_cli.pipeline import Engine
    from magnet_cli.settings import InferenceSettings

    engine = Engine(bundle, InferenceSettings(bands=(5, 3, 2), device="cpu"))
    assert engine.normalization.bands == (4, 2, 1)


def test_segment_warns_when_the_refiner_was_trained_with_another_segmenter(bundle_dir, png, tmp_path):
    from magnet_cli.models.bundle import save_bundle, segmenter_digest

    from tests.conftest import tiny_bundle

    other = tiny_bundle(seed=7)
    other.refiner.segmenter_sha256 = segmenter_digest(other.segmenter.module)  # as train-refiner records it
    other_dir = tmp_path / "other"
    save_bundle(other_dir, "other", other.classes, other.segmenter.module, "small_unet", (64, 64), other.refiner,
                points=0.5, smooth_kernel=3, architecture_options={"widths": [8, 16]})
    paired = segment(bundle_dir, png, "-o", tmp_path / "a.zarr")
    assert paired.exit_code == 0 and "warning" not in paired.output
    mixed = segment(bundle_dir, png, "-o", tmp_path / "b.zarr", "--refiner", other_dir / "refiner.pt")
    assert mixed.exit_code == 0, mixed.output
    assert "warning: " in mixed.output and "segmenter" in mixed.output


def test_info_model_shows_a_bundle(bundle_dir):
    result = invoke("info", "--model", bundle_dir, "--json")
    assert result.exit_code == 0, result.output
    details = json.loads(result.output)
    assert details["name"] == "tiny" and len(details["classes"]) == NUM_CLASSES
    shown = invoke("info", "--model", bundle_dir)
    assert shown.exit_code == 0 and "tiny" in shown.output
