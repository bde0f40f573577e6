"""Physical resolution (issue 14 item 5): the pixel size every reader finds, `--resolution` and a bundle's
`resolution`, segmenting from the pyramid level that fits, and labels that carry the physical scale."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr_models.v05.image_label import ImageLabel
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.errors import MagnetWarning, UsageError
from magnet_cli.io.base import Box
from magnet_cli.io.labels import multiscales_of, read_labels
from magnet_cli.io.open import describe, open_image
from magnet_cli.io.pixel_size import FULL, PixelSize, parse_resolution, tiff_resolution, working_factor
from magnet_cli.io.resampled import FullResolutionWriter, ResampledSource, nearest_starts, working_scale
from magnet_cli.io.tiff import TiffSource
from magnet_cli.models.bundle import BundleSpec

from tests.conftest import random_rgb

SIZE = 256  # the slide; its levels are 128 and 64
UM = PixelSize(0.25, 0.25, "um")


def slide(path: Path, mpp: float | None = 0.25, size: int = SIZE) -> Path:
    """A tiled pyramidal TIFF (SubIFD levels at 2x and 4x) with `mpp` um/px in its resolution tags."""
    image = random_rgb(size, size, seed=3)
    tags = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if mpp else {}
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(64, 64), photometric="rgb", subifds=2, **tags)
        for factor in (2, 4):
            tif.write(image[::factor, ::factor].copy(), tile=(32, 32), photometric="rgb", subfiletype=1)
    return path


def segment(*args: str, mode: str = "patch") -> object:
    return CliRunner().invoke(app, ["segment", *args, "--no-progress", "--mode", mode], catch_exceptions=False)


def multiscale(label: Path) -> dict:
    return multiscales_of(dict(zarr.open_group(str(label), mode="r").attrs))[0]


@pytest.fixture
def levels_read(monkeypatch) -> list[int]:
    """The stored levels every TiffSource of the run reads pixels from (the spy sits on the class: the run
    opens its own), but for the one-pixel probe each open makes of level 0."""
    levels: list[int] = []
    original = TiffSource.read_level

    def spy(self, level, y0, x0, y1, x1):
        if (level, y0, x0, y1, x1) != (0, 0, 0, 1, 1):
            levels.append(level)
        return original(self, level, y0, x0, y1, x1)

    monkeypatch.setattr(TiffSource, "read_level", spy)
    return levels


# --- the test -------------------------------------------------------------------------------------
def test_a_0_25_um_slide_segmented_at_0_5_um_reads_level_1_and_writes_0_5_um_labels(tmp_path, bundle_dir, levels_read):
    image = slide(tmp_path / "slide.tif")
    out = tmp_path / "slide.zarr"
    result = segment(str(image), "-o", str(out), "--model", str(bundle_dir), "--resolution", "0.5um", "--json", mode="magnet")
    assert result.exit_code == 0, result.output
    assert 1 in levels_read and 0 not in levels_read  # the windows come from the 2x level, never level 0
    assert read_labels(out).shape == (SIZE // 2, SIZE // 2)
    record = json.loads(result.output)[0]
    assert record["resolution"] == "0.5 um" and record["resolution_factor"] == [2.0, 2.0]

    # ome-zarr-models validates the label image and reads the physical scale and unit.
    attributes = ImageLabel.from_zarr(zarr.open_group(str(out), mode="r")).ome_attributes
    (scales,) = attributes.multiscales
    assert [axis.unit for axis in scales.axes] == ["micrometer", "micrometer"]
    first = scales.datasets[0].coordinateTransformations
    assert list(first[0].scale) == [0.5, 0.5]
    assert list(first[1].translation) == [0.125, 0.125]  # a 0.5 um pixel's centre lies 0.125 um into the slide
    # ome-zarr-py (napari's reader) finds it with the same scale.
    (node,) = [n for n in Reader(parse_url(str(out)))() if n.load(Label)]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [0.5, 0.5]

    # The run metadata records the input's pixel size, the working one and the factor.
    magnet = dict(zarr.open_group(str(out), mode="r").attrs)["magnet"]
    assert (magnet["pixel_size"], magnet["resolution"], magnet["resolution_factor"]) == ("0.25 um", "0.5 um", [2.0, 2.0])


def test_at_full_resolution_level_0_is_read_and_the_labels_carry_the_slides_scale(tmp_path, bundle_dir, levels_read):
    """The control of the test above: without --resolution the same slide is read from level 0."""
    image = slide(tmp_path / "slide.tif")
    out = tmp_path / "slide.zarr"
    assert segment(str(image), "-o", str(out), "--model", str(bundle_dir)).exit_code == 0
    assert 0 in levels_read and read_labels(out).shape == (SIZE, SIZE)
    transforms = multiscale(out)["datasets"][0]["coordinateTransformations"]
    assert transforms == [{"type": "scale", "scale": [0.25, 0.25]}]


def test_labels_at_full_are_the_working_labels_upsampled(tmp_path, bundle_dir):
    image = slide(tmp_path / "slide.tif")
    working, full = tmp_path / "working.zarr", tmp_path / "full.zarr"
    # The tiny random model gives one class everywhere: its probabilities show where each pixel came from.
    common = ["--model", str(bundle_dir), "--resolution", "0.5um", "--write-probabilities"]
    assert segment(str(image), "-o", str(working), *common).exit_code == 0
    assert segment(str(image), "-o", str(full), *common, "--labels-at", "full").exit_code == 0
    small, large = read_labels(working), read_labels(full)
    assert large.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(large, np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))
    small, large = (zarr.open_array(str(p / "probabilities" / "0"), mode="r")[...] for p in (working, full))
    assert large.shape == (3, SIZE, SIZE) and len(np.unique(small)) > 10
    np.testing.assert_array_equal(large, np.repeat(np.repeat(small, 2, axis=1), 2, axis=2))
    assert multiscale(full)["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [0.25, 0.25]}]


def test_the_bundles_resolution_is_used_unless_the_option_says_otherwise(tmp_path, bundle_dir):
    model = Path(shutil.copytree(bundle_dir, tmp_path / "model"))
    replace(BundleSpec.read(model), resolution=PixelSize(0.5, 0.5, "um")).write(model)
    image = slide(tmp_path / "slide.tif")
    assert segment(str(image), "-o", str(tmp_path / "a.zarr"), "--model", str(model)).exit_code == 0
    assert read_labels(tmp_path / "a.zarr").shape == (SIZE // 2, SIZE // 2)
    assert segment(str(image), "-o", str(tmp_path / "b.zarr"), "--model", str(model), "--resolution", "full").exit_code == 0
    assert read_labels(tmp_path / "b.zarr").shape == (SIZE, SIZE)
    info = CliRunner().invoke(app, ["info", "--model", str(model), "--json"])
    assert json.loads(info.output)["resolution"] == "0.5 um"


def test_an_input_without_a_pixel_size_warns_and_is_segmented_at_full_resolution(tmp_path, bundle_dir):
    image = slide(tmp_path / "plain.tif", mpp=None)
    out = tmp_path / "plain.zarr"
    result = segment(str(image), "-o", str(out), "--model", str(bundle_dir), "--resolution", "0.5um")
    assert result.exit_code == 0, result.output
    assert "has no pixel size: segmenting at full resolution" in result.output
    assert read_labels(out).shape == (SIZE, SIZE)
    with open_image(image) as source, pytest.warns(MagnetWarning, match="no pixel size"):
        assert working_scale(source.pixel_size, PixelSize(0.5, 0.5, "um"), image) == (1.0, 1.0)


def test_a_resolution_finer_than_the_image_is_refused(tmp_path, bundle_dir):
    image = slide(tmp_path / "slide.tif")
    result = segment(str(image), "-o", str(tmp_path / "out.zarr"), "--model", str(bundle_dir), "--resolution", "0.1um")
    assert result.exit_code == 2
    assert "the image's pixels are 0.25 um; --resolution 0.1um would upsample" in result.output
    assert not (tmp_path / "out.zarr").exists()


def test_a_resolution_in_other_units_than_the_image_warns_and_keeps_full_resolution(geotiff):
    with open_image(geotiff) as source, pytest.warns(MagnetWarning, match="not in um: segmenting at full resolution"):
        assert working_scale(source.pixel_size, PixelSize(0.5, 0.5, "um"), geotiff) == (1.0, 1.0)


def test_a_georeferenced_mask_at_a_coarser_ground_sample_distance_stays_on_the_map(tmp_path, bundle_dir, geotiff):
    out, mask = tmp_path / "geo.zarr", tmp_path / "geo_mask.tif"
    result = segment(str(geotiff), "-o", str(out), "--model", str(bundle_dir), "--resolution", "1m", "--geotiff", str(mask))
    assert result.exit_code == 0, result.output
    assert read_labels(out).shape == (150, 200)  # 300 x 400 at 0.5 m
    with tifffile.TiffFile(mask) as tif:
        tags = tif.pages.first.tags
        assert tuple(tags.valueof(33550))[:2] == (1.0, 1.0)  # ModelPixelScale doubled
        assert tuple(tags.valueof(33922))[3:5] == (500000.0, 4000000.0)  # the same corner
    assert multiscale(out)["axes"][0]["unit"] == "meter"


def test_vector_output_of_working_labels_is_in_the_slides_level_0_pixels(tmp_path, bundle_dir):
    pytest.importorskip("shapely")
    image = slide(tmp_path / "slide.tif")
    polygons = tmp_path / "slide.geojson"
    result = segment(str(image), "-o", str(tmp_path / "s.zarr"), "--model", str(bundle_dir), "--resolution", "0.5um",
                     "--vector", str(polygons))
    assert result.exit_code == 0, result.output
    points = np.array([p for f in json.loads(polygons.read_text())["features"] for ring in f["geometry"]["coordinates"] for p in ring])
    assert points.min() == 0 and points.max() == SIZE  # QuPath's level-0 pixels, not the 128 px working grid


# --- the pieces -----------------------------------------------------------------------------------------------
def test_pixel_size_is_read_from_each_kind_of_input(tmp_path, svs_tiff, ome_tiff, geotiff):
    assert open_image(slide(tmp_path / "cm.tif")).pixel_size == UM  # TIFF tags, pixels per centimetre
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, random_rgb(32, 32), resolution=(50800, 25400), resolutionunit="INCH")
    assert open_image(inch).pixel_size == PixelSize(1.0, 0.5, "um")
    with open_image(svs_tiff) as source:  # the Aperio description's MPP = 0.5
        assert source.pixel_size == PixelSize(0.5, 0.5, "um")
    with open_image(geotiff) as source:  # UTM: metres
        assert source.pixel_size == PixelSize(0.5, 0.5, "m")
        assert describe(source)["pixel_size"] == "0.5 m"
    ome = tmp_path / "sized.ome.tif"
    tifffile.imwrite(ome, random_rgb(32, 32), metadata={"PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})
    assert open_image(ome).pixel_size == PixelSize(0.4e-3, 0.3e-3, "um")
    assert open_image(ome_tiff).pixel_size is None  # an OME-TIFF that states no size


def test_the_ngff_scale_is_a_pixel_size_only_with_a_unit(tmp_path):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    pixels = np.moveaxis(random_rgb(64, 64), -1, 0)
    for name, units in (("um.zarr", {"y": "micrometer", "x": "micrometer"}), ("bare.zarr", None)):
        group = zarr.open_group(str(tmp_path / name), mode="w", zarr_format=3)
        write_image(pixels, group, axes="cyx", fmt=FormatV05(), scale={"y": 0.5, "x": 0.25}, axes_units=units)
    assert open_image(tmp_path / "um.zarr").pixel_size == PixelSize(0.5, 0.25, "um")
    assert open_image(tmp_path / "bare.zarr").pixel_size is None


def test_tiff_resolution_ignores_no_unit_and_screen_defaults():
    assert tiff_resolution((40000, 1), (40000, 1), 3) == UM
    assert tiff_resolution((1, 1), (1, 1), 1) is None  # ResolutionUnit none
    assert tiff_resolution((72, 1), (72, 1), 2) is None  # 72 dpi: a writer's default
    assert tiff_resolution(None, (72, 1), 2) is None


def test_info_shows_the_pixel_size(tmp_path):
    result = CliRunner().invoke(app, ["info", str(slide(tmp_path / "slide.tif")), "--json"])
    assert json.loads(result.output)["pixel_size"] == "0.25 um"


@pytest.mark.parametrize(
    "text, expected",
    [("0.5um", PixelSize(0.5, 0.5, "um")), ("500nm", PixelSize(0.5, 0.5, "um")), ("0.5 µm", PixelSize(0.5, 0.5, "um")),
     ("1m", PixelSize(1, 1, "m")), ("2km", PixelSize(2000, 2000, "m")), ("1e-4deg", PixelSize(1e-4, 1e-4, "deg")),
     ("full", FULL)],
)
def test_resolution_spellings(text, expected):
    assert parse_resolution(text) == expected


@pytest.mark.parametrize("text", ["0.5", "um", "-1um", "0um", "0.5 parsecs", "fast"])
def test_bad_resolutions_are_one_usage_error(text):
    from magnet_cli.settings import InferenceSettings

    with pytest.raises(UsageError, match="--resolution"):
        InferenceSettings(resolution=text)


def test_working_factor_tolerates_a_scanners_rounding_and_refuses_upsampling():
    assert working_factor(PixelSize(0.2520, 0.2520, "um"), PixelSize(0.25, 0.25, "um")) == (1.0, 1.0)
    assert working_factor(UM, PixelSize(1.0, 1.0, "um")) == (4.0, 4.0)
    with pytest.raises(ValueError, match="would upsample"):
        working_factor(PixelSize(0.5, 0.5, "um"), UM)


def test_a_resampled_view_reads_the_full_resolution_box_from_the_fitting_level(tmp_path, read_level_spy):
    """Its own level 0 is the view; its stored levels are the input's coarser ones, in view pixels."""
    with open_image(slide(tmp_path / "slide.tif")) as source:
        view = ResampledSource(source, SIZE // 2, SIZE // 2)
        calls = read_level_spy(source)
        got = view.read(Box(0, 0, 64, 64), 64, 64)
        want = source.read(Box(0, 0, 128, 128), 64, 64)
        assert [c[0] for c in calls] == [1, 1]
        assert view.pixel_size == PixelSize(0.5, 0.5, "um")
        assert [(l.height, l.downsample_y) for l in view.levels] == [(128, 1.0), (64, 2.0)]
        np.testing.assert_array_equal(view.read_level(1, 0, 0, 8, 8), source.read_level(2, 0, 0, 8, 8))
        np.testing.assert_array_equal(view.read_level(0, 0, 0, 8, 8), source.read_level(1, 0, 0, 8, 8))
        np.testing.assert_array_equal(got.numpy(), want.numpy())


class _Recorder:
    """A LabelWriter's write/end_unit that paints into an array and counts writes per pixel."""

    def __init__(self, shape):
        self.labels, self.count = np.zeros(shape, np.int64), np.zeros(shape, np.int64)

    def write(self, y0, x0, labels, probabilities=None, uncertainty=None):
        h, w = labels.shape
        self.labels[y0 : y0 + h, x0 : x0 + w] = labels
        self.count[y0 : y0 + h, x0 : x0 + w] += 1
        if probabilities is not None:
            assert probabilities.shape == (2, h, w) and (probabilities[0] == labels).all()


@pytest.mark.parametrize("working, full", [((7, 5), (10, 16)), ((4, 4), (8, 8)), ((3, 9), (3, 9)), ((5, 1), (17, 3))])
def test_upsampling_to_full_resolution_tiles_exactly_and_is_nearest(working, full, monkeypatch):
    """Windows that tile the working image, in any split, cover every full-resolution pixel exactly once with
    the label of the working pixel nearest its centre, even when the factor is not a whole number."""
    from magnet_cli.io import resampled

    monkeypatch.setattr(resampled, "MAX_STRIP_PIXELS", 7)  # many strips per window
    rng = np.random.default_rng(1)
    small = rng.integers(0, 9, working)
    recorder = _Recorder(full)
    writer = FullResolutionWriter(recorder, working, full)
    for ys in ((0, 2), (2, working[0])) if working[0] > 2 else ((0, working[0]),):
        for xs in ((0, 1), (1, working[1])) if working[1] > 1 else ((0, working[1]),):
            block = small[ys[0] : ys[1], xs[0] : xs[1]]
            writer.write(ys[0], xs[0], block, np.stack([block, block]).astype(float))
    assert (recorder.count == 1).all()
    rows = ((np.arange(full[0]) + 0.5) * working[0] / full[0]).astype(int)
    cols = ((np.arange(full[1]) + 0.5) * working[1] / full[1]).astype(int)
    np.testing.assert_array_equal(recorder.labels, small[np.ix_(rows, cols)])
    assert nearest_starts(working[0], full[0])[-1] == full[0]


def test_labels_beside_their_image_follow_its_levels_at_any_resolution(tmp_path, bundle_dir):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    image = tmp_path / "slide.zarr"
    group = zarr.open_group(str(image), mode="w", zarr_format=3)
    write_image(np.moveaxis(random_rgb(SIZE, SIZE), -1, 0), group, axes="cyx", fmt=FormatV05(),
                scale={"y": 0.25, "x": 0.25}, axes_units={"y": "micrometer", "x": "micrometer"})
    label = image / "labels" / "magnet"
    assert segment(str(image), "-o", str(label), "--model", str(bundle_dir), "--resolution", "0.5um").exit_code == 0
    image_levels = [zarr.open_array(str(image / d["path"]), mode="r").shape[-2:] for d in multiscale(image)["datasets"]]
    label_levels = [zarr.open_array(str(label / d["path"]), mode="r").shape for d in multiscale(label)["datasets"]]
    assert label_levels == image_levels and label_levels[0] == (SIZE, SIZE)
    assert dict(zarr.open_group(str(label), mode="r").attrs)["magnet"]["resolution"] == "0.5 um"


@pytest.mark.parametrize(
    "tags",
    [
        {"ModelPixelScaleTag": [0.5, 0.5, 0.0], "ModelTiepointTag": [0, 0, 0, 500000.0, 4000000.0, 0],
         "GeoKeyDirectoryTag": [1, 1, 0, 2, 1025, 0, 1, 2, 3072, 0, 1, 32633]},  # RasterPixelIsPoint
        {"ModelTransformationTag": [0.5, 0.1, 0, 10.0, 0.2, -0.5, 0, 20.0, 0, 0, 0, 0, 0, 0, 0, 1]},  # rotated
    ],
)
def test_a_scaled_georeference_places_the_coarser_pixels_on_the_same_ground(tags):
    from magnet_cli.io.georeference import epsg_code, geo_transform, scaled_georeference, scaled_transform

    scaled = scaled_georeference(tags, 2.0, 3.0)
    assert geo_transform(scaled) == pytest.approx(scaled_transform(geo_transform(tags), 2.0, 3.0))
    assert epsg_code(scaled) == epsg_code(tags)


    def corner(transform, col, row):
        a, b, c, d, e, f = transform
        return a * col + b * row + c, d * col + e * row + f

    # the corner of label pixel (col 1, row 1) is the corner of input pixel (col 3, row 2)
    assert corner(geo_transform(scaled), 1, 1) == pytest.approx(corner(geo_transform(tags), 3, 2))
