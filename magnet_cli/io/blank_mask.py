"""Which parts of an image are blank (`--background`): a small boolean mask at thumbnail resolution.

Blank is what the input itself declares empty (its no-data value, alpha 0), plus, with `auto`, uniform
glass or flat borders found on the thumbnail, or what a mask image says (FILE: 0 = background). The
engine skips windows whose whole subtree is blank and the writer gives blank pixels the no-data label.

The mask is a grid of cells over the image, at most MASK_SIDE per side, read from the input's stored
level that fits (never full resolution when a coarser level exists), in row bands, so memory stays
flat. It is a pure function of the input's stored pixels and the setting, so every process of a run
(units, --resume, --shard, Dask workers) computes the same one. A cell is blank only when every stored
pixel under it is: no-data is honoured at the mask's resolution (cells of up to about
max(height, width) / MASK_SIDE input pixels); a cell part blank, part not, is segmented as tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magnet_cli.errors import InputError
from magnet_cli.io.base import Box, ImageSource, PixelNormalization, to_model_input
from magnet_cli.settings import BACKGROUND_WORDS

MASK_SIDE = 1024  # cells per side at most: 1 MB of booleans; a 100k^2 slide gets ~100 px cells
BAND_PIXELS = 1 << 22  # stored pixels per row band read while building the mask

# `auto`: a cell is uniform when its grey level varies less than this (std, on [0, 1]) ...
FLAT_STD = 0.03
# ... and blank when it also lies within this of the dominant bright (glass) or dark (border) plateau,
PLATEAU_TOLERANCE = 0.08
BRIGHT, DARK = 0.6, 0.2  # grey levels above / below which a plateau counts as glass / border
MIN_PLATEAU_SHARE = 0.05  # a plateau must cover this share of the cells to be taken as background
# `auto` measures texture over cells of at least this many stored pixels per side.
MIN_TEXTURE_CELL = 4
# Blank specks smaller than this (cells per side) are tissue texture, not glass; tissue keeps a margin of
# at least MARGIN_CELLS cells and MARGIN_PIXELS image pixels so that its edges are never skipped.
OPENING_CELLS = 3
MARGIN_CELLS = 2
MARGIN_PIXELS = 16


def label_nodata(dtype: np.dtype) -> int:
    """The no-data label value: the top of the label dtype (255 for uint8, 65535 for uint16); class ids
    stay below it (uint8 labels hold at most 255 classes)."""
    return int(np.iinfo(np.dtype(dtype)).max)


@dataclass(frozen=True)
class BlankMask:
    """Boolean cells over the image; cell (i, j) covers the image pixels with floor(y * scale_y) == i and
    floor(x * scale_x) == j (coordinates of the image the engine segments)."""

    blank: np.ndarray  # (cells_y, cells_x) bool
    scale_y: float  # cells per image pixel
    scale_x: float

    @property
    def fraction(self) -> float:
        """Share of the cells that are blank."""
        return float(self.blank.mean()) if self.blank.size else 0.0

    def all_blank(self, y0: float, x0: float, y1: float, x1: float) -> bool:
        """Whether every cell the box (end-exclusive) touches is blank."""
        rows = self._span(y0, y1, self.scale_y, self.blank.shape[0])
        cols = self._span(x0, x1, self.scale_x, self.blank.shape[1])
        return bool(self.blank[rows, cols].all())

    def pixels(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """(y1 - y0, x1 - x0) bool: the blank pixels of an integer region."""
        rows = np.minimum((np.arange(y0, y1) * self.scale_y).astype(np.int64), self.blank.shape[0] - 1)
        cols = np.minimum((np.arange(x0, x1) * self.scale_x).astype(np.int64), self.blank.shape[1] - 1)
        return self.blank[np.ix_(rows, cols)]

    @staticmethod
    def _span(start: float, stop: float, scale: float, count: int) -> slice:
        first = min(count - 1, max(0, math.floor(start * scale)))
        last = min(count, max(first + 1, math.ceil(stop * scale - 1e-9)))
        return slice(first, last)


def declares_blank(source: ImageSource) -> bool:
    """Whether the input declares blank pixels (a no-data value or an alpha band): `nodata` mode costs
    nothing without them."""
    return source.nodata is not None or source.alpha_band is not None


def might_be_blank(source: ImageSource, background: str) -> bool:
    """Whether a run with this `--background` setting may write no-data labels for this input."""
    return background != "none" and (background != "nodata" or declares_blank(source))


def blank_mask(source: ImageSource, background: str, normalization: PixelNormalization = PixelNormalization()) -> BlankMask | None:
    """The blank cells of `source` under a `--background` setting (nodata, auto, none or a mask file's
    path); None when nothing can be blank, so the run costs nothing extra."""
    if background == "none" or (background == "nodata" and not declares_blank(source)):
        return None
    level, per_cell = _grid(source, MIN_TEXTURE_CELL if background == "auto" else 1)
    stored = source.levels[level]
    cells = (math.ceil(stored.height / per_cell), math.ceil(stored.width / per_cell))
    scale = (stored.height / (source.height * per_cell), stored.width / (source.width * per_cell))
    declared, mean, spread = _cell_statistics(source, level, per_cell, normalization, background == "auto")
    blank = declared
    if background == "auto":
        margin = max(MARGIN_CELLS, math.ceil(MARGIN_PIXELS * max(scale)))
        blank = blank | _uniform_background(mean, spread, declared, margin)
    elif background not in BACKGROUND_WORDS:
        file_mask = mask_file_cells(Path(background), cells)
        # The file's cells span the image exactly; ours may reach past its edge (a partial last cell).
        blank = blank | _regrid(file_mask, cells, (cells[0] / (scale[0] * source.height), cells[1] / (scale[1] * source.width)))
    return BlankMask(blank, *scale)


def mask_file_cells(path: Path, cells: tuple[int, int]) -> np.ndarray:
    """A mask image (any size, any reader's format) over the image's extent at `cells`: True where every
    mask pixel under a cell is 0 (background), the way QuPath and TIAToolbox export tissue masks."""
    from magnet_cli.io.open import open_image

    if not path.exists():
        raise InputError(f"--background {path}: no such file")
    with open_image(path) as mask:
        # Values clamp to [0, 1] before the area average: a cell reads 0 only if all its pixels are 0.
        values = mask.read(Box(0, 0, mask.height, mask.width), *cells, PixelNormalization((0,), (0.0, 1.0)))
    return (values[0] == 0).numpy()


def _regrid(mask: np.ndarray, cells: tuple[int, int], reach: tuple[float, float]) -> np.ndarray:
    """`mask` (spanning the image) on our grid of `cells`, whose extent is `reach` times the image's."""
    rows = np.minimum((np.arange(cells[0]) * mask.shape[0] / cells[0] * reach[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum((np.arange(cells[1]) * mask.shape[1] / cells[1] * reach[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def _grid(source: ImageSource, min_cell: int) -> tuple[int, int]:
    """The stored level the mask is read from (the coarsest still at least MASK_SIDE cells' worth) and its
    pixels per cell side (at least `min_cell`)."""
    downsample = max(1.0, max(source.height, source.width) / MASK_SIDE)
    level = source.best_level(downsample)
    stored = source.levels[level]
    return level, max(min_cell, math.ceil(max(stored.height, stored.width) / MASK_SIDE))


def _cell_statistics(
    source: ImageSource, level: int, per_cell: int, normalization: PixelNormalization, grey: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per cell: whether every stored pixel is declared blank; with `grey`, the mean and standard deviation
    of the grey level of the pixels (declared-blank ones included)."""
    stored = source.levels[level]
    height, width = stored.height, stored.width
    cells_y, cells_x = math.ceil(height / per_cell), math.ceil(width / per_cell)
    declared = np.zeros((cells_y, cells_x), dtype=bool)
    mean = np.zeros((cells_y, cells_x), dtype=np.float32) if grey else None
    spread = np.zeros((cells_y, cells_x), dtype=np.float32) if grey else None
    rows_per_band = per_cell * max(1, BAND_PIXELS // max(1, width * per_cell))
    nodata, alpha = source.nodata, source.alpha_band
    for y0 in range(0, height, rows_per_band):
        y1 = min(height, y0 + rows_per_band)
        raw = source.read_level(level, y0, 0, y1, width)
        if raw.ndim == 2:
            raw = raw[:, :, None]
        blank = np.zeros(raw.shape[:2], dtype=bool)
        if nodata is not None and _representable(nodata, raw.dtype):
            blank |= (raw == np.asarray(nodata, dtype=raw.dtype) if raw.dtype.kind != "f" else np.isclose(raw, nodata)).all(axis=2)
        if alpha is not None and alpha < raw.shape[2]:
            blank |= raw[:, :, alpha] == 0
        band = slice(y0 // per_cell, math.ceil(y1 / per_cell))
        declared[band] = _blocks(blank, per_cell, True).all(axis=(1, 3))
        if grey:
            values = to_model_input(raw, normalization, source.path).mean(dim=0).numpy()
            blocks = _blocks(values, per_cell, np.nan)
            mean[band] = np.nanmean(blocks, axis=(1, 3))  # type: ignore[index]
            spread[band] = np.nanstd(blocks, axis=(1, 3))  # type: ignore[index]
    return declared, mean, spread


def _representable(value: float, dtype: np.dtype) -> bool:
    """Whether samples of `dtype` can hold `value` (-9999 declared for uint16 data matches no pixel)."""
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    return info is not None and float(value).is_integer() and info.min <= value <= info.max


def _blocks(values: np.ndarray, side: int, pad: object) -> np.ndarray:
    """(h, w) -> (cells_y, side, cells_x, side), the partial last cells padded with `pad`."""
    h, w = values.shape
    ph, pw = -h % side, -w % side
    if ph or pw:
        values = np.pad(values.astype(np.float32) if pad is np.nan else values, ((0, ph), (0, pw)), constant_values=pad)
    return values.reshape(values.shape[0] // side, side, values.shape[1] // side, side)


def _uniform_background(mean: np.ndarray, spread: np.ndarray, declared: np.ndarray, margin: int) -> np.ndarray:
    """Cells of the dominant bright or dark plateau of uniform cells, in regions too large to be tissue
    texture, with a margin of tissue kept around everything that is not blank."""
    from scipy import ndimage

    flat = (spread < FLAT_STD) & ~declared
    blank = np.zeros_like(flat)
    values = mean[flat]
    if values.size:
        bins = np.linspace(0.0, 1.0, 65)
        counts, _ = np.histogram(values, bins)
        centres = (bins[:-1] + bins[1:]) / 2
        for side in (centres >= BRIGHT, centres <= DARK):
            if not side.any() or counts[side].max() < MIN_PLATEAU_SHARE * mean.size:
                continue
            plateau = centres[side][np.argmax(counts[side])]
            blank |= flat & (np.abs(mean - plateau) <= PLATEAU_TOLERANCE)
    structure = np.ones((OPENING_CELLS, OPENING_CELLS), dtype=bool)
    # Outside the image counts as blank while eroding (glass running off the edge is not a speck), but an
    # opening must never add cells: ndimage's dilation with that border would grow glass over tissue
    # slivers along the edge.
    candidates = blank | declared
    blank = ndimage.binary_opening(candidates, structure=structure, border_value=1) & candidates & ~declared
    tissue = ~(blank | declared)
    kept = ndimage.binary_dilation(tissue, iterations=margin) if tissue.any() else tissue
    return blank & ~kept
