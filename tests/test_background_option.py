"""`segment --background`: the input's no-data honoured by default, the no-data label in every output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from skimage import io as skio

from magnet_cli.segmentation import segment
from magnet_cli.settings import InferenceSettings, ModelSettings, OutputSettings

from tests.conftest import random_rgb

NODATA = 255  # the tiny bundle's labels are uint8


def geotiff_with_nodata(path, image, nodata):
    """A GeoTIFF whose GDAL_NODATA tag declares `nodata` (pixel-is-area, 1 m pixels)."""
    tifffile.imwrite(
        path, image, photometric="rgb", tile=(64, 64),
        extratags=[
            (33550, "d", 3, (1.0, 1.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
            (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True),
            (42113, "s", 0, f"{nodata}", True),
        ],
    )


def labels_of(output):
    root = zarr.open_group(str(output), mode="r")
    return np.asarray(root["0"][...]), dict(root.attrs)


def run(tmp_path, bundle_dir, image_path, name, **options):
    output = tmp_path / f"{name}.zarr"
    outputs = options.pop("outputs", OutputSettings())
    (result,) = segment(
        [image_path], output, model=ModelSettings(model=bundle_dir),
        inference=InferenceSettings(device="cpu", levels=2, **options), outputs=outputs,
    )
    return output, result


@pytest.fixture
def half_nodata(tmp_path):
    image = random_rgb(256, 256, seed=5)
    image[:, :128] = 0
    path = tmp_path / "scene.tif"
    geotiff_with_nodata(path, image, 0)
    return path


def test_a_geotiffs_nodata_is_honoured_by_default_in_every_output(tmp_path, bundle_dir, half_nodata):
    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("shapely")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    geotiff, vector, preview = tmp_path / "labels.tif", tmp_path / "labels.geojson", tmp_path / "preview.png"
    outputs = OutputSettings(geotiff=geotiff, vector=vector, preview=preview)
    output, result = run(tmp_path, bundle_dir, half_nodata, "default", outputs=outputs)
    labels, attributes = labels_of(output)
    assert (labels[:, :128] == NODATA).all()
    assert (labels[:, 128:] < 3).all()
    assert attributes["magnet"]["nodata"] == NODATA and attributes["magnet"]["background"] == "nodata"
    image_label = (attributes.get("ome") or attributes)["image-label"]
    assert {"label-value": NODATA, "class": "no data"} in image_label["properties"]
    assert {"label-value": NODATA, "rgba": [0, 0, 0, 0]} in image_label["colors"]
    assert result.nodata_pixels == 256 * 128 and sum(result.class_pixels.values()) == 256 * 128
    with rasterio.open(geotiff) as dataset:
        assert dataset.nodata == NODATA
        assert (dataset.read(1) == labels).all()
    (node,) = list(Reader(parse_url(str(output)))())
    assert node.metadata["properties"][NODATA] == {"class": "no data"} and node.metadata["color"][NODATA][3] == 0
    features = json.loads(vector.read_text())["features"]
    assert features and all(f["properties"]["class_id"] < 3 for f in features)  # no polygon of no data
    shown = skio.imread(preview)[:256, :256, :3]
    assert (shown[:, :128] == 0).all()  # the thumbnail alone (the input is 0 there), no class colour


def test_none_gives_todays_output_and_tissue_labels_do_not_change(tmp_path, bundle_dir, half_nodata):
    default, _ = run(tmp_path, bundle_dir, half_nodata, "default")
    plain, result = run(tmp_path, bundle_dir, half_nodata, "none", background="none")
    masked, _ = labels_of(default)
    unmasked, attributes = labels_of(plain)
    assert attributes["magnet"]["nodata"] is None and result.nodata_pixels == 0
    assert (unmasked < 3).all()
    assert np.array_equal(masked[:, 128:], unmasked[:, 128:])


def test_alpha_zero_of_an_rgba_png_is_no_data(tmp_path, bundle_dir):
    rgba = np.dstack([random_rgb(128, 128, seed=6), np.full((128, 128), 255, np.uint8)])
    rgba[64:, :, 3] = 0
    path = tmp_path / "rgba.png"
    skio.imsave(path, rgba, check_contrast=False)
    outputs = OutputSettings(write_probabilities=True, write_uncertainty=True)
    output, result = run(tmp_path, bundle_dir, path, "rgba", outputs=outputs)
    labels, _ = labels_of(output)
    assert (labels[64:] == NODATA).all() and (labels[:64] < 3).all()
    assert result.nodata_pixels == 64 * 128
    root = zarr.open_group(str(output), mode="r")
    probabilities, uncertainty = np.asarray(root["probabilities/0"][...]), np.asarray(root["uncertainty/0"][...])
    assert not probabilities[:, 64:].any() and not uncertainty[64:].any()  # zeros where nothing was segmented
    assert (probabilities[:, :64].sum(0) > 0).all()


def test_a_mask_file_at_another_size_marks_the_background(tmp_path, bundle_dir):
    image = tmp_path / "scene.png"
    skio.imsave(image, random_rgb(128, 128, seed=2), check_contrast=False)
    tissue = np.zeros((32, 32), np.uint8)
    tissue[:, 16:] = 255  # QuPath/TIAToolbox style: nonzero = tissue
    mask = tmp_path / "tissue.png"
    skio.imsave(mask, tissue, check_contrast=False)
    masked, _ = run(tmp_path, bundle_dir, image, "masked", background=str(mask))
    plain, _ = run(tmp_path, bundle_dir, image, "plain", background="none")
    labels, attributes = labels_of(masked)
    assert attributes["magnet"]["background"] == str(mask)
    # Upsampled, the mask blends at its edge: pixels near tissue stay tissue (a margin of one mask pixel).
    assert (labels[:, :56] == NODATA).all() and not (labels[:, 64:] == NODATA).any()
    on_tissue = labels != NODATA
    assert np.array_equal(labels[on_tissue], labels_of(plain)[0][on_tissue])


def test_evaluate_leaves_predicted_no_data_out_and_reports_its_share(tmp_path, bundle_dir, half_nodata):
    from magnet_cli.evaluation import evaluate

    output, _ = run(tmp_path, bundle_dir, half_nodata, "default")
    predicted, _ = labels_of(output)
    truth = np.where(np.arange(256)[None, :] < 200, 1, 2).repeat(256, 0).astype(np.uint8)
    skio.imsave(tmp_path / "truth.png", truth, check_contrast=False)
    summary = evaluate([output], [tmp_path / "truth.png"]).to_dict()
    assert summary["pixels"] == 256 * 128  # only the segmented half is scored
    assert summary["unsegmented_pixels"] == 256 * 128 and summary["unsegmented_share"] == 0.5
    assert [row["class"] for row in summary["per_class"]] == ["class_0", "class_1", "class_2"]
    tissue = predicted[:, 128:]
    assert summary["pixel_accuracy"] == pytest.approx(float((tissue == truth[:, 128:]).mean()))


@pytest.mark.parametrize("given, message", [("missing.png", "expected nodata, auto, none or an existing mask"), ("notes.txt", "notes.txt")])
def test_a_mask_file_that_is_missing_or_no_image_is_one_red_line(tmp_path, bundle_dir, half_nodata, given, message):
    from typer.testing import CliRunner

    from magnet_cli.cli import app

    (tmp_path / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(app, [
        "segment", str(half_nodata), "-o", str(tmp_path / "out.zarr"), "--model", str(bundle_dir), "--no-progress",
        "--device", "cpu", "--background", str(tmp_path / given),
    ])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_whole_level_selection_masks_the_blank_pixels_at_write_time(tmp_path, bundle_dir, half_nodata):
    output, result = run(tmp_path, bundle_dir, half_nodata, "global", selection="global")
    labels, _ = labels_of(output)
    assert (labels[:, :128] == NODATA).all() and (labels[:, 128:] < 3).all()


def test_the_preview_draws_no_data_without_a_class_colour(tmp_path):
    from magnet_cli.classes import default_classes
    from magnet_cli.io.preview import NODATA_GREY, write_preview

    labels = np.ones((64, 64), np.uint8)
    labels[:, :32] = NODATA
    thumbnail = np.full((64, 64, 3), 200, np.uint8)
    write_preview([labels], tmp_path / "bare.png", default_classes(3), nodata=NODATA)
    write_preview([labels], tmp_path / "over.png", default_classes(3), thumbnail=thumbnail, nodata=NODATA)
    assert (skio.imread(tmp_path / "bare.png")[:64, :32, :3] == NODATA_GREY).all()
    assert (skio.imread(tmp_path / "over.png")[:64, :32, :3] == 200).all()
    # The legend says so: a grey "no data" swatch, or (over a thumbnail, which shows through) a note line.
    from tests.io.test_preview import has_swatch

    assert has_swatch(skio.imread(tmp_path / "bare.png")[64:, :, :3], (NODATA_GREY,) * 3)
    write_preview([labels], tmp_path / "plain.png", default_classes(3), thumbnail=thumbnail)
    assert skio.imread(tmp_path / "over.png").shape[0] > skio.imread(tmp_path / "plain.png").shape[0]
    write_preview([np.full((64, 64), NODATA, np.uint8)], tmp_path / "blank.png", default_classes(3), nodata=NODATA)
    assert has_swatch(skio.imread(tmp_path / "blank.png")[64:, :, :3], (NODATA_GREY,) * 3)


def test_auto_skips_glass_and_keeps_tissue_labels(tmp_path, bundle_dir):
    rng = np.random.default_rng(1)
    slide = (236 + rng.integers(-3, 4, size=(256, 256, 3))).astype(np.uint8)
    slide[64:160, 96:192] = random_rgb(96, 96, seed=3)  # a tissue island on glass
    path = tmp_path / "slide.png"
    skio.imsave(path, slide, check_contrast=False)
    auto, result = run(tmp_path, bundle_dir, path, "auto", background="auto")
    plain, _ = run(tmp_path, bundle_dir, path, "plain", background="none")
    labels, attributes = labels_of(auto)
    assert attributes["magnet"]["nodata"] == NODATA
    assert not (labels[60:164, 92:196] == NODATA).any()  # tissue and its edge
    assert (labels[:32] == NODATA).all() and (labels[224:] == NODATA).all()  # glass far from it
    on_tissue = labels != NODATA
    assert np.array_equal(labels[on_tissue], labels_of(plain)[0][on_tissue])
    assert result.nodata_pixels > 256 * 256 // 2


def test_the_device_fed_writer_masks_blank_pixels(tmp_path, bundle_dir, half_nodata, monkeypatch):
    """On a GPU labels and counts are made on the device; the stand-in (meta) device takes that path."""
    import torch

    from magnet_cli import devices

    monkeypatch.setattr(devices, "resolve_device", lambda name="auto": torch.device("meta"))
    output, result = run(tmp_path, bundle_dir, half_nodata, "device", selection="global")
    labels, _ = labels_of(output)
    assert (labels[:, :128] == NODATA).all() and not labels[:, 128:].any()  # meta values read back as 0
    assert result.nodata_pixels == 256 * 128  # counted on the host; the class counts come from the device
