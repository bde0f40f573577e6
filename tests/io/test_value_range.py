"""Real imagery's values: 11- and 12-bit data in uint16 containers, 8-band rasters chosen by 1-based
--bands, and the range each image was read with recorded in its output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.io.labels import read_labels
from magnet_cli.io.open import open_image
from magnet_cli.io.value_range import resolve_value_range
from magnet_cli.settings import InferenceSettings

from tests.conftest import random_rgb


def write_tiff(path, pixels, **tags):
    extratags = [(281, "H", 1, tags["max_sample_value"], True)] if "max_sample_value" in tags else []
    if "gdal_maximum" in tags:
        text = f'<GDALMetadata><Item name="STATISTICS_MAXIMUM" sample="0">{tags["gdal_maximum"]}</Item></GDALMetadata>'
        extratags.append((42112, "s", 0, text, True))
    tifffile.imwrite(path, pixels, photometric="rgb" if pixels.shape[-1] == 3 else "minisblack", extratags=extratags)
    return path


def eleven_bit(seed: int = 0, size: int = 128) -> np.ndarray:
    return (random_rgb(size, size, seed=seed).astype(np.uint16) * 8)  # at most 255 * 8 = 2040


@pytest.mark.parametrize(
    "tags, expected, how",
    [
        ({"max_sample_value": 2047}, (0.0, 2047.0), "MaxSampleValue"),
        ({"gdal_maximum": 1999}, (0.0, 1999.0), "GDAL statistics"),
        ({}, None, "percentile stretch"),
    ],
)
def test_auto_reads_the_range_the_file_states_else_stretches(tmp_path, tags, expected, how):
    pixels = eleven_bit()
    with open_image(write_tiff(tmp_path / "in.tif", pixels, **tags)) as source:
        value_range, source_of_it = resolve_value_range(source, "auto", None)
    assert how in source_of_it
    if expected is not None:
        assert value_range == expected
    else:
        assert value_range == (0.0, pytest.approx(np.percentile(pixels, 99.9), rel=0.02))


def test_explicit_dtype_and_bundle_ranges_win_over_auto(tmp_path):
    path = write_tiff(tmp_path / "in.tif", eleven_bit(), max_sample_value=2047)
    with open_image(path) as source:
        assert resolve_value_range(source, (10.0, 20.0), (0.0, 4095.0))[0] == (10.0, 20.0)
        assert resolve_value_range(source, None, (0.0, 4095.0)) == ((0.0, 4095.0), "the model bundle")
        assert resolve_value_range(source, "dtype", None)[0] == (0.0, 65535.0)
        assert resolve_value_range(source, None, None)[0] == (0.0, 2047.0)  # None: auto when the bundle is silent
    with open_image(write_tiff(tmp_path / "u8.tif", random_rgb(64, 64))) as source:  # 8-bit: the type's range
        assert resolve_value_range(source, "auto", None)[0] == (0.0, 255.0)


@pytest.mark.parametrize("text", ["5,1", "0", "nope", "1,inf"])
def test_bad_value_ranges_are_usage_errors(text):
    from magnet_cli.errors import UsageError

    with pytest.raises(UsageError, match="--value-range"):
        InferenceSettings(value_range=text)


def test_an_11_bit_8_band_raster_segments_like_its_8_bit_rgb(tmp_path):
    """WorldView-like data: 8 bands of uint16 holding 11-bit values, RGB in bands 5, 3, 2 (GDAL's count).
    With --bands 5,3,2 and the default --value-range auto the default model sees what it sees on the 8-bit
    RGB scene; divided by 65535 (--value-range dtype) it sees a near-black image."""
    from magnet_cli.synthetic import synth
    from magnet_cli.settings import RunSettings

    image, _ = synth(tmp_path / "scene", size=384, seed=9001, count=1, run=RunSettings(progress=False))[0]
    rgb = tifffile.imread(image)
    bands = np.zeros((*rgb.shape[:2], 8), dtype=np.uint16)
    for band, channel in ((5, 0), (3, 1), (2, 2)):  # counted from 1
        bands[..., band - 1] = rgb[..., channel].astype(np.uint16) * 8
    bands[..., [0, 3, 5, 6, 7]] = 2047  # other bands saturated: the wrong band order would show
    multi = tmp_path / "wv.tif"
    tifffile.imwrite(multi, bands, photometric="minisblack", planarconfig="contig")

    runner = CliRunner()
    base = ["segment", "--no-progress", "--json", "--mode", "patch"]
    assert runner.invoke(app, [*base, str(image), "-o", str(tmp_path / "rgb.zarr")]).exit_code == 0
    result = runner.invoke(app, [*base, str(multi), "-o", str(tmp_path / "wv.zarr"), "--bands", "5,3,2"])
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)[0]
    expected = read_labels(tmp_path / "rgb.zarr")
    labels = read_labels(tmp_path / "wv.zarr")
    assert (labels == expected).mean() >= 0.95
    assert reported["value_range"][0] == 0 and 1000 <= reported["value_range"][1] <= 2040  # the stretch
    record = dict(zarr.open_group(str(tmp_path / "wv.zarr"), mode="r").attrs)["magnet"]
    assert record["value_range"] == reported["value_range"] and "stretch" in record["value_range_from"]

    dark = runner.invoke(app, [*base, str(multi), "-o", str(tmp_path / "dark.zarr"), "--bands", "5,3,2",
                               "--value-range", "dtype"])
    assert dark.exit_code == 0
    assert (read_labels(tmp_path / "dark.zarr") == expected).mean() < 0.8  # what auto fixes
