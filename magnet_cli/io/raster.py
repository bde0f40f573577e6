"""PNG, JPEG and the other small raster formats imageio reads, loaded whole into memory on open."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import imageio.v3 as iio
import numpy as np

from magnet_cli.errors import InputError
from magnet_cli.io.array import ArraySource
from magnet_cli.io.base import check_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RasterSource(ArraySource):
    """A single-level image decoded once on open (first frame of animated formats)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        array, format_name = read_raster(path)
        if array.ndim not in (2, 3):
            raise InputError(f"{path}: expected a 2-D image, got an array of shape {array.shape}")
        check_image(path, array.shape[0], array.shape[1], array.dtype)
        super().__init__(array, name=str(path))
        self.path = path
        self.format_name = format_name
        self.chunks = (self.height, self.width)
        if format_name == "PNG" and self.bands in (2, 4):  # gray + alpha, RGBA
            self.extra["alpha_band"] = self.bands - 1

    def close(self) -> None:
        self._arrays = []


def read_raster(path: Path) -> tuple[np.ndarray, str]:
    """Decode a whole image file; 16-bit PNGs keep 16 bits (Pillow would reduce colour ones to 8)."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with path.open("rb") as handle:
            head = handle.read(32)
        if head.startswith(PNG_SIGNATURE) and len(head) >= 25 and head[24] == 16:
            return np.asarray(imagecodecs.png_decode(path.read_bytes())), "PNG"
        array = np.asarray(iio.imread(path, index=0))
        format_name = _format_name(path)
    except MemoryError:
        raise
    except Exception as exc:  # PIL/imageio/imagecodecs errors on a corrupt or foreign file
        raise InputError(f"{path}: cannot decode image: {exc}") from exc
    if array.dtype.kind in "iu" and array.dtype not in (np.uint8, np.uint16) and array.size:
        # Pillow reads some 16-bit grayscale files as int32 ('I' mode); keep them when they fit uint16.
        if array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
            array = array.astype(np.uint16)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array, format_name


def _format_name(path: Path) -> str:
    try:
        from PIL import Image

        with Image.open(path) as image:
            return str(image.format or path.suffix.lstrip(".").upper())
    except Exception:  # only a label for `magnet info`
        return path.suffix.lstrip(".").upper()
