"""PNG preview of a finished label image (`--preview`): class colours, optionally blended over a thumbnail,
with a legend of the classes it shows (colour swatch and name) below the image.

Reads only one small pyramid level of the label image, so a preview of a gigapixel mask costs about as
much as one of a megapixel mask.

Colours are told apart: a class keeps its own colour unless that colour is within CIEDE2000 MIN_DELTA_E
of an earlier shown class's preview colour, or (blended over a thumbnail) of the mean image under the
class, where its tint would not show (a near-white road on a light image). Such a class is drawn in the
first colour that passes both tests among darker and lighter versions of its own (hue kept), then a
216-colour grid, nearest to its own first. The legend shows the colours the image uses.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Sequence

import imagecodecs
import numpy as np
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab
from skimage.transform import resize

from magnet_cli.classes import ClassInfo
from magnet_cli.io.labels import NODATA_NAME, open_label_levels, read_labels, replace_file_atomically

__all__ = ["write_preview", "read_labels", "preview_shape", "is_magnet_preview", "preview_colors", "legend_strip"]

# A tEXt chunk in every preview magnet-cli writes: how --overwrite knows the file is its own.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARKER_KEY, MARKER_TEXT = b"Software", b"magnet-cli-preview/1"

# The CIEDE2000 distance a shown class's colour keeps from the others' and from the mean image under it.
# The shipped palettes pass (closest pairs: classes.PALETTE 20.9, the default bundle 29.9); blending at 50%
# halves it on the image. On the bundled example (scene_s42_0) only meadow (9.8 from the meadow texture)
# and water (16.9) change, to a lighter green and a lighter blue.
MIN_DELTA_E = 20.0
LIGHTNESS_STEPS = (10.0, 20.0, 30.0, 40.0)  # L* shifts tried, darker and lighter, before other colours
GRID = np.array(np.meshgrid(*[np.arange(0, 256, 51)] * 3, indexing="ij"), dtype=np.uint8).reshape(3, -1).T
# Legend geometry in pixels: margin, swatch side, swatch-to-name gap, row height, name size, column gap.
PAD, SWATCH, GAP, ROW, FONT_PX, COLUMN_GAP = 8, 14, 6, 20, 12, 16
SWATCH_EDGE = (96, 96, 96)  # a 1-px frame, so a white swatch shows on the white legend
MAX_NAME = 40  # longer class names are shortened with an ellipsis in the legend
# The colour rule and the legend cover at most this many shown classes, those with the most preview
# pixels: far more names would dwarf the image, and few more colours can keep MIN_DELTA_E apart.
MAX_LEGEND = 64


NODATA_GREY = 128  # blank regions in a preview without a thumbnail

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
    legend: bool = True,
    nodata: int | None = None,
) -> Path:
    """Write `png_path`: the label colours (alpha-blended over `thumbnail` if given), long side <= max_size,
    and below it a legend of the classes shown (the image stays at the top left; the PNG is as wide as
    the wider of the two). `label_path` is a label image, or its levels (finest first) as
    `LabelWriter.seal()` returns them.

    Pixels of the `nodata` label value (blank regions, --background) show the thumbnail alone (no class
    colour), or NODATA_GREY without one. An existing PNG at `png_path` is replaced (atomically); callers
    enforce any --overwrite policy.
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

    background = None if thumbnail is None else _fit(_as_rgb_uint8(thumbnail), out_h, out_w)
    blank = labels == nodata if nodata is not None else None
    image = _render(labels, classes, background, alpha, legend, blank is not None and bool(blank.any()))
    if blank is not None:
        image[: blank.shape[0], : blank.shape[1]][blank] = background[blank] if background is not None else NODATA_GREY
    encoded = with_marker(imagecodecs.png_encode(np.ascontiguousarray(image)))
    png_path = Path(png_path)
    with replace_file_atomically(png_path) as temporary:
        temporary.write_bytes(encoded)
    return png_path


def _render(labels: np.ndarray, classes: list[ClassInfo], background: np.ndarray | None, alpha: float, legend: bool,
            any_blank: bool = False) -> np.ndarray:
    """The preview's pixels: class colours told apart (`preview_colors`), blended over the background,
    and the legend strip below; with `any_blank`, the legend also says how no-data pixels are drawn."""
    counts = np.bincount(labels.ravel())
    shown = [k for k in range(min(len(classes), len(counts))) if counts[k]]
    left_out = max(0, len(shown) - MAX_LEGEND)
    shown = sorted(sorted(shown, key=lambda k: -counts[k])[:MAX_LEGEND])
    blended = background is not None and alpha < 1
    palette = np.zeros((max(len(classes), len(counts)), 3), dtype=np.uint8)  # unknown ids: black
    palette[: len(classes)] = preview_colors(
        [c.color for c in classes], shown, _mean_under(labels, background, counts) if blended else None
    )
    image = palette[labels]
    if background is not None:
        image = np.rint((1.0 - alpha) * background + alpha * image).clip(0, 255).astype(np.uint8)
    if not legend or not (shown or any_blank):
        return image
    names, colors = [classes[k].name for k in shown], palette[shown]
    notes = [f"and {left_out} more classes"] if left_out else []
    if any_blank and background is None:
        names, colors = [*names, NODATA_NAME], np.vstack([colors, np.full((1, 3), NODATA_GREY, np.uint8)])
    elif any_blank:  # blank pixels show the thumbnail itself: no swatch can stand for that
        notes.append(f"{NODATA_NAME}: shown without a class colour")
    return _above(image, legend_strip(names, colors, image.shape[1], "; ".join(notes) or None))


def _fit(background: np.ndarray, height: int, width: int) -> np.ndarray:
    """The thumbnail resized (bilinear, anti-aliased when shrinking) to the preview's size."""
    if background.shape[:2] == (height, width):
        return background
    return resize(
        background, (height, width), order=1, preserve_range=True,
        anti_aliasing=background.shape[0] > height or background.shape[1] > width,
    )


def preview_colors(
    colors: Sequence[Sequence[int]], shown: Sequence[int], backgrounds: np.ndarray | None = None
) -> np.ndarray:
    """(n, 3) uint8 preview colours of n classes: each shown class (in id order) keeps its colour when
    that differs by >= MIN_DELTA_E from the earlier shown classes' preview colours and, with
    `backgrounds` ((n, 3): the mean image under each class), from its background; else it takes the
    first passing one of: its own colour made darker or lighter, then the grid nearest its own first
    (if none passes, the one failing least)."""
    result = np.array(colors, dtype=np.uint8).reshape(-1, 3)
    taken: list[np.ndarray] = []  # Lab of the shown classes' preview colours so far
    for k in shown:
        own = _lab(result[k][None])
        grid = GRID[np.argsort(deltaE_ciede2000(_lab(GRID), own), kind="stable")]
        options = np.vstack([result[k][None], _lightness_variants(own[0]), grid])
        labs = _lab(options)
        margin = np.full(len(options), np.inf)
        if taken:
            margin = deltaE_ciede2000(labs[:, None], np.array(taken)[None]).min(axis=1) - MIN_DELTA_E
        if backgrounds is not None:
            contrast = deltaE_ciede2000(labs, _lab(np.asarray(backgrounds[k], dtype=np.float64)[None]))
            margin = np.minimum(margin, contrast - MIN_DELTA_E)
        passing = np.flatnonzero(margin >= 0)
        pick = int(passing[0]) if len(passing) else int(np.argmax(margin))
        result[k] = options[pick]
        taken.append(labs[pick])
    return result


def _lab(rgb: np.ndarray) -> np.ndarray:
    return rgb2lab(np.asarray(rgb, dtype=np.float64)[None] / 255.0)[0]


def _lightness_variants(lab: np.ndarray) -> np.ndarray:
    """sRGB of the Lab colour with L* shifted by each of LIGHTNESS_STEPS, darker then lighter (clipped)."""
    shifted = [(np.clip(lab[0] + sign * step, 0, 100), lab[1], lab[2]) for step in LIGHTNESS_STEPS for sign in (-1, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "negative Z values clipped": out-of-gamut shifts, clipped on purpose
        return np.rint(lab2rgb(np.array(shifted)[None])[0] * 255).astype(np.uint8)


def _mean_under(labels: np.ndarray, background: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(classes, 3) mean background colour under each class id (zeros where a class is absent)."""
    flat = labels.ravel()
    sums = np.stack([np.bincount(flat, weights=background[..., c].ravel(), minlength=len(counts)) for c in range(3)], axis=1)
    return sums / np.maximum(counts, 1)[:, None]


def legend_strip(names: Sequence[str], colors: np.ndarray, width: int, note: str | None = None) -> np.ndarray:
    """(h, w, 3) uint8 legend, w >= `width`: a framed colour swatch and the name of each class, in rows
    of as many columns as fit, then `note` on a line of its own. Text is drawn by matplotlib's Agg
    renderer (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100.0
    names = [n if len(n) <= MAX_NAME else n[: MAX_NAME - 1] + "\u2026" for n in names]
    figure = Figure(dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    texts = [
        figure.text(0, 0, n, fontsize=FONT_PX * 72 / dpi, va="center", ha="left", parse_math=False)
        for n in [*names, *([note] if note else [])]
    ]
    renderer = canvas.get_renderer()
    extents = [int(np.ceil(t.get_window_extent(renderer).width)) for t in texts]
    entry = SWATCH + GAP + max(extents[: len(names)])
    width = max(width, entry + 2 * PAD, extents[-1] + 2 * PAD if note else 0)
    columns = max(1, (width - 2 * PAD + COLUMN_GAP) // (entry + COLUMN_GAP))
    rows = -(-len(names) // columns)
    height = 2 * PAD + (rows + bool(note)) * ROW
    figure.set_size_inches(width / dpi, height / dpi)
    spots = [(PAD + (i // columns) * ROW + (ROW - SWATCH) // 2, PAD + (i % columns) * (entry + COLUMN_GAP)) for i in range(len(names))]
    for text, (y, x) in zip(texts, spots):
        text.set_position(((x + SWATCH + GAP) / width, 1 - (y + SWATCH / 2) / height))
    if note:
        texts[-1].set_position((PAD / width, 1 - (PAD + rows * ROW + ROW / 2) / height))
    canvas.draw()
    rendered = np.asarray(canvas.buffer_rgba())[:height, :width, :3]
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    strip[: rendered.shape[0], : rendered.shape[1]] = rendered
    for color, (y, x) in zip(colors, spots):
        strip[y : y + SWATCH, x : x + SWATCH] = SWATCH_EDGE
        strip[y + 1 : y + SWATCH - 1, x + 1 : x + SWATCH - 1] = color
    return strip


def _above(image: np.ndarray, strip: np.ndarray) -> np.ndarray:
    """The image at the top left over the strip, on white."""
    height, width = image.shape[0] + strip.shape[0], max(image.shape[1], strip.shape[1])
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    canvas[: image.shape[0], : image.shape[1]] = image
    canvas[image.shape[0] :, : strip.shape[1]] = strip
    return canvas


def _resize_nearest(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resampling by pixel centres (no interpolation between class ids)."""
    if labels.shape == (height, width):
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


def _as_rgb_uint8(thumbnail: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 from a thumbnail of any band count: its first three bands (an N-band model's first
    three chosen bands; RGBA loses alpha), or its first band as grey when it has fewer; floats are taken as [0, 1]."""
    image = np.asarray(thumbnail)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] < 1:
        raise ValueError(f"thumbnail must be (h, w) or (h, w, bands), got shape {image.shape}")
    if image.shape[2] < 3:
        image = np.repeat(image[:, :, :1], 3, axis=2)
    image = image[:, :, :3]
    if image.dtype.kind == "f":
        image = np.rint(np.clip(image, 0.0, 1.0) * 255.0)
    return image.astype(np.uint8, copy=False)
