from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from magnet_cli.errors import InputError
from magnet_cli.io.base import Box
from magnet_cli.io.raster import RasterSource

from .conftest import HEIGHT, WIDTH, imsave, pattern


def test_png_rgb_is_exact_and_single_level(png_rgb, rgb):
    with RasterSource(png_rgb) as source:
        assert (source.height, source.width, source.bands, source.dtype) == (HEIGHT, WIDTH, 3, np.uint8)
        assert len(source.levels) == 1 and source.format_name == "PNG"
        np.testing.assert_array_equal(source.read_level(0, 20, 30, 250, 301), rgb[20:250, 30:301])


def test_grayscale_png_is_one_band_and_reads_as_replicated_rgb(tmp_path):
    gray = pattern(30, 40, bands=1)[:, :, 0]
    with RasterSource(imsave(tmp_path / "gray.png", gray)) as source:
        assert source.bands == 1
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 30, 40)[:, :, 0], gray)
        out = source.read(Box(0, 0, 30, 40), 30, 40).numpy()
        np.testing.assert_allclose(out[0], gray / 255.0, atol=1e-6)
        assert np.array_equal(out[0], out[2])


def test_rgba_png_keeps_four_bands(tmp_path):
    rgba = pattern(30, 40, bands=4)
    with RasterSource(imsave(tmp_path / "rgba.png", rgba)) as source:
        assert source.bands == 4
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 30, 40), rgba)
        assert source.read(Box(0, 0, 30, 40), 30, 40).shape == (3, 30, 40)


def test_16_bit_colour_png_keeps_16_bits(tmp_path):
    values = pattern(30, 40, dtype=np.uint16)
    path = tmp_path / "deep.png"
    path.write_bytes(imagecodecs.png_encode(values))
    with RasterSource(path) as source:
        assert source.dtype == np.uint16
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 30, 40), values)


def test_16_bit_gray_png(tmp_path):
    values = pattern(30, 40, bands=1, dtype=np.uint16)[:, :, 0]
    with RasterSource(imsave(tmp_path / "gray16.png", values)) as source:
        assert (source.dtype, source.bands) == (np.uint16, 1)
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 30, 40)[:, :, 0], values)


def test_palette_png_expands_to_rgb(tmp_path):
    indices = (np.arange(30 * 40).reshape(30, 40) % 4).astype(np.uint8)
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(tmp_path / "palette.png")
    with RasterSource(tmp_path / "palette.png") as source:
        assert source.bands == 3
        np.testing.assert_array_equal(source.read_level(0, 0, 0, 1, 4)[0], np.array(palette).reshape(4, 3))


def test_jpeg_reads_close_to_what_was_written(jpeg_rgb):
    with RasterSource(jpeg_rgb) as source:
        assert (source.height, source.width, source.bands, source.format_name) == (120, 160, 3, "JPEG")
        region = source.read_level(0, 0, 0, 120, 160).astype(int)
        assert abs(region[:, :, 2] - 128).mean() < 3


def test_truncated_png_is_an_input_error(tmp_path, png_rgb):
    path = tmp_path / "cut.png"
    path.write_bytes(png_rgb.read_bytes()[:300])
    with pytest.raises(InputError, match="cut.png: cannot decode image"):
        RasterSource(path)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="gone.png: no such file"):
        RasterSource(tmp_path / "gone.png")
