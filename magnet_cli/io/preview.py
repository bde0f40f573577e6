"""PNG preview of a finished label image (`--preview`): class colours, optionally blended over a thumbnail.

Reads only one small pyramid level of the label image, so a preview of a gigapixel mask costs about as
much as one of a megapixel mask.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any, Sequence

import imagecodecs
import numpy as np
from skimage.transform import resize

from magnet_cli.classes import ClassInfo
from magnet_cli.io.labels import open_label_levels, read_labels, replace_file_atomically

__all__ = ["write_preview", "read_labels", "preview_shape", "is_magnet_preview"]

# A tEXt chunk in every preview magnet-cli writes: how --overwrite knows the file is its own.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARKER_KEY, MARKER_TEXT = b"Software", b"magnet-cli-preview/1"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def with_marker(png: bytes) -> bytes:
    """The PNG with our tEXt chunk right after IHDR (the first chunk, 8 + 25 bytes in)."""
    end_of_ihdr = len(PNG_SIGNATURE) + 25
    return png[:end_of_ihdr] + _chunk(b"tEXt", MARKER_KEY + b"\0" + MARKER_TEXT) + png[end_of_ihdr:]


def is_magnet_preview(path: Path) -> bool:
    """Whether `path` is a PNG magnet-cli wrote: our tEXt chunk comes before the image data."""
    try:
        with open(path, "rb") as file:
            if file.read(8) != PNG_SIGNATURE:
                return False
            while True:
                header = file.read(8)
                if len(header) < 8:
                    return False
                length, kind = struct.unpack(">I", header[:4])[0], header[4:]
                if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                    return False
                data = file.read(length)
                file.read(4)  # crc
                if kind == b"tEXt" and data == MARKER_KEY + b"\0" + MARKER_TEXT:
                    return True
    except OSError:
        return False


def preview_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """The preview's (h, w): the full image scaled so its long side is min(max_size, long side)."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def write_preview(
    label_path: Path | Sequence[Any],
    png_path: Path,
    classes: list[ClassInfo],
    thumbnail: np.ndarray | None = None,
    max_size: int = 1024,
    alpha: float = 0.5,
) -> Path:
    """Write `png_path`: the label colours (alpha-blended over `thumbnail` if given), long side <= max_size.
    `label_path` is a label image, or its levels (finest first) as `LabelWriter.seal()` returns them.

    An existing PNG at `png_path` is replaced (atomically); callers enforce any --overwrite policy.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    levels = open_label_levels(label_path) if isinstance(label_path, (str, Path)) else list(label_path)
    height, width = levels[0].shape
    out_h, out_w = preview_shape(height, width, max_size)
    # The coarsest level still at least as large as the preview: levels shrink, so keep the last that fits.
    chosen = 0
    for index, array in enumerate(levels):
        if max(array.shape) >= max(out_h, out_w):
            chosen = index
    labels = _resize_nearest(np.asarray(levels[chosen][...]), out_h, out_w)

    palette = np.zeros((max(len(classes), int(labels.max()) + 1), 3), dtype=np.uint8)  # unknown ids: black
    palette[: len(classes)] = [c.color for c in classes]
    image = palette[labels]
    if thumbnail is not None:
        background = _as_rgb_uint8(thumbnail)
        if background.shape[:2] != (out_h, out_w):
            background = resize(
                background, (out_h, out_w), order=1, preserve_range=True,
                anti_aliasing=background.shape[0] > out_h or background.shape[1] > out_w,
            )
        image = np.rint((1.0 - alpha) * background + alpha * image).clip(0, 255).astype(np.uint8)

    encoded = with_marker(imagecodecs.png_encode(np.ascontiguousarray(image)))
    png_path = Path(png_path)
    with replace_file_atomically(png_path) as temporary:
        temporary.write_bytes(encoded)
    return png_path


def _resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resampling by pixel centres (no interpolation between class ids)."""
    if labels.shape == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def _as_rgb_uint8(thumbnail: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 from an RGB(A) or gray thumbnail; floats are taken as [0, 1]."""
    image = np.asarray(thumbnail)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"thumbnail must be (h, w), (h, w, 3) or (h, w, 4), got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    if image.dtype.kind == "f":
        image = np.rint(np.clip(image, 0.0, 1.0) * 255.0)
    return image.astype(np.uint8, copy=False)
