"""A temporary pyramid for inputs stored without one, built in one pass over level 0 in bounded memory.

Level k (k >= 1) has shape ceil(H / 2^k) x ceil(W / 2^k) and downsample exactly 2^k: its pixel (i, j)
is the mean of level-0 rows [i 2^k, (i+1) 2^k) and columns [j 2^k, (j+1) 2^k), clipped to the image
(ceiling convention: the last row/column of a level averages only the pixels that exist). Level 0 is
read in blocks whose sides are multiples of 2^K (K the coarsest level), so every block maps onto whole
pixels of every level and is reduced into all of them at once, exactly and independently of the others.
Integer samples are rounded to the nearest value; bool samples become float32 means in [0, 1].
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import zarr

from magnet_cli.errors import OutputError
from magnet_cli.io.base import ImageSource, PyramidLevel
from magnet_cli.io.labels import uninterruptible
from magnet_cli.io.zarr_source import region_index

BLOCK_SIDE = 1024  # level-0 block side for tiled or chunk-less sources (rounded up to a multiple of 2^K)
BLOCK_PIXELS = 1 << 22  # target level-0 pixels per block when strips force full-width blocks
CACHE_CHUNK = 256  # chunk side of the temporary Zarr levels


def pyramid_shapes(height: int, width: int, min_size: int) -> list[tuple[int, int]]:
    """Shapes of levels 1..K: ceil(H / 2^k) x ceil(W / 2^k), down to a long side of at most min_size."""
    if min_size < 1:
        raise ValueError(f"min_size must be positive, got {min_size}")
    shapes = []
    k = 1
    while True:
        shape = (-(-height // 2**k), -(-width // 2**k))
        shapes.append(shape)
        if max(shape) <= min_size:
            return shapes
        k += 1


def ensure_pyramid(
    source: ImageSource, tmp_dir: Path | None = None, min_size: int = 512, keep_in: Path | None = None
) -> ImageSource:
    """`source` itself when it has a stored pyramid or is small, else a source with a temporary pyramid.

    The temporary pyramid lives in a fresh folder under `tmp_dir` (the system temp folder when None) and
    is deleted by the returned source's close(), which also closes `source`. With `keep_in`, it lives in
    that folder instead and outlives the source: a pyramid already complete there is reused (a resumed
    run, another shard), one is built there otherwise (under a lock, so shards build it once). If
    building fails, `source` is closed too (the caller would have no other handle to close it with).
    """
    coarsest = source.levels[-1]
    if max(coarsest.height, coarsest.width) <= 2 * min_size:
        return source
    # No pyramid, or a stored one that stops short (a 2-level TIFF of a huge image): build the missing
    # coarser levels from the coarsest stored level, so coarse windows never read huge regions.
    try:
        return CachedPyramidSource(source, tmp_dir, min_size, keep_in)
    except BaseException:
        source.close()
        raise


def _no_room_beside(folder: Path, error: OSError) -> str:
    return f"cannot write the input's temporary pyramid in {folder.parent}: {error.strerror or error}"


def _no_room(directory: Path | None, error: OSError) -> str:
    where = directory if directory is not None else tempfile.gettempdir()
    return (
        f"cannot write the temporary pyramid in {where}: {error.strerror or error} "
        "(set TMPDIR to a folder with room)"
    )


class CachedPyramidSource(ImageSource):
    """The stored levels from the original source, coarser ones from a temporary Zarr store it deletes
    on close."""

    def __init__(self, source: ImageSource, tmp_dir: Path | None, min_size: int, keep_in: Path | None = None) -> None:
        base = source.levels[-1]
        shapes = pyramid_shapes(base.height, base.width, min_size)
        self._source = source
        self._stored = len(source.levels)
        self._dir: Path | None = None
        if keep_in is not None:
            self._arrays = _kept_levels(source, shapes, Path(keep_in), self._stored - 1)
        else:
            try:
                with uninterruptible():  # the folder exists only once self._dir names it
                    self._dir = Path(tempfile.mkdtemp(prefix="magnet-pyramid-", dir=tmp_dir))
                self._arrays = build_levels(source, shapes, self._dir, base_level=self._stored - 1)
            except BaseException as error:  # SIGTERM and Ctrl-C included: nothing stays in TMPDIR
                directory, self._dir = self._dir, None
                if directory is not None:
                    shutil.rmtree(directory, ignore_errors=True)
                if isinstance(error, OSError):  # disk full in TMPDIR: one line naming the folder
                    raise OutputError(_no_room(directory or tmp_dir, error)) from None
                raise
        levels = list(source.levels) + [
            PyramidLevel(h, w, base.downsample_y * 2**k, base.downsample_x * 2**k)
            for k, (h, w) in enumerate(shapes, start=1)
        ]
        super().__init__(
            source.path,
            source.height,
            source.width,
            source.bands,
            source.dtype,
            levels,
            chunks=source.chunks,
            format_name=source.format_name,
            georeference=source.georeference,
            extra={**source.extra, "temporary_pyramid": str(self._dir if self._dir is not None else keep_in)},
        )

    def read_level(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        if level < self._stored:
            return self._source.read_level(level, y0, x0, y1, x1)
        array = self._arrays[level - self._stored]
        return np.asarray(array[region_index("YXC", array.shape, y0, x0, y1, x1)])

    def close(self) -> None:
        self._arrays = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._source.close()


COMPLETE = "complete"  # written last into a kept pyramid's folder


def _kept_levels(source: ImageSource, shapes: list[tuple[int, int]], folder: Path, base_level: int) -> list[zarr.Array]:
    """The levels in `folder`: opened when a complete pyramid is there, else built beside it and renamed
    in. An exclusive lock on `folder`.lock makes parallel shards wait for one build instead of racing."""
    import fcntl

    try:
        lock = os.open(folder.with_name(folder.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputError(_no_room_beside(folder, error)) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / COMPLETE).is_file():
            building = folder.with_name(f"{folder.name}.building-{uuid.uuid4().hex}")
            try:
                building.mkdir()
                build_levels(source, shapes, building, base_level=base_level)
                (building / COMPLETE).write_text("")
                shutil.rmtree(folder, ignore_errors=True)  # an incomplete one cannot be there, but be sure
                os.rename(building, folder)
            except BaseException as error:
                shutil.rmtree(building, ignore_errors=True)
                if isinstance(error, OSError):
                    raise OutputError(_no_room_beside(folder, error)) from None
                raise
        return [zarr.open_array(str(folder / f"level{k}.zarr"), mode="r") for k in range(1, len(shapes) + 1)]
    finally:
        os.close(lock)


# --------------------------------------------------------------------------------------------------
def build_levels(
    source: ImageSource, shapes: list[tuple[int, int]], directory: Path, base_level: int = 0
) -> list[zarr.Array]:
    """Write levels 1..K below stored level `base_level` into Zarr arrays under `directory`, reading
    that level once."""
    step = 2 ** len(shapes)
    level_dtype = np.dtype(np.float32) if source.dtype == np.bool_ else np.dtype(source.dtype)
    with uninterruptible():
        arrays = _create_levels(source, shapes, directory)
    base = source.levels[base_level]
    if base_level == 0:
        block_y, block_x = block_shape(source, step)
    else:  # stored coarse levels are tiled like level 0 in practice; their chunking is not recorded
        block_y = block_x = _round_up(BLOCK_SIDE, step)
    first_sum_dtype = np.float64 if source.dtype == np.float64 else np.float32
    for y0 in range(0, base.height, block_y):
        y1 = min(base.height, y0 + block_y)
        for x0 in range(0, base.width, block_x):
            x1 = min(base.width, x0 + block_x)
            sums = source.read_level(base_level, y0, x0, y1, x1).astype(first_sum_dtype)
            rows, cols = np.ones(y1 - y0), np.ones(x1 - x0)
            for k, array in enumerate(arrays, start=1):
                sums = _pair_sum(_pair_sum(sums, 0), 1)
                if k == 1:
                    sums = sums.astype(np.float64)  # float32 is exact for level 1 of uint8/uint16, not beyond
                rows, cols = _pair_sum(rows, 0), _pair_sum(cols, 0)
                mean = sums / (rows[:, None, None] * cols[None, :, None])
                ly, lx = y0 >> k, x0 >> k
                with uninterruptible():  # an interrupted zarr write could outlive the folder's removal
                    array[ly : ly + mean.shape[0], lx : lx + mean.shape[1]] = _cast(mean, level_dtype)
    return arrays


def _create_levels(source: ImageSource, shapes: list[tuple[int, int]], directory: Path) -> list[zarr.Array]:
    """The empty Zarr arrays of levels 1..K (float32 for bool sources, else the source's dtype)."""
    level_dtype = np.dtype(np.float32) if source.dtype == np.bool_ else np.dtype(source.dtype)
    return [
        zarr.create_array(
            store=str(directory / f"level{k}.zarr"),
            shape=(h, w, source.bands),
            chunks=(min(CACHE_CHUNK, h), min(CACHE_CHUNK, w), source.bands),
            dtype=level_dtype,
            fill_value=0,
            zarr_format=3,
        )
        for k, (h, w) in enumerate(shapes, start=1)
    ]


def block_shape(source: ImageSource, step: int) -> tuple[int, int]:
    """Level-0 block (rows, columns): multiples of `step`, aligned to the source's chunks where cheap."""
    chunk_y, chunk_x = (source.chunks[-2], source.chunks[-1]) if source.chunks and len(source.chunks) >= 2 else (0, 0)
    if chunk_x >= source.width:  # strips span whole rows: read full-width bands of strips
        block_x = _round_up(source.width, step)
        unit = _aligned_unit(step, chunk_y, limit=max(step, 4 * BLOCK_PIXELS // source.width))
        return _round_up(max(1, BLOCK_PIXELS // source.width), unit), block_x
    unit_y = _aligned_unit(step, chunk_y, limit=4 * BLOCK_SIDE)
    unit_x = _aligned_unit(step, chunk_x, limit=4 * BLOCK_SIDE)
    return _round_up(max(BLOCK_SIDE, chunk_y), unit_y), _round_up(max(BLOCK_SIDE, chunk_x), unit_x)


def _aligned_unit(step: int, chunk: int, limit: int) -> int:
    """lcm(step, chunk) when it is at most `limit` (blocks then never split a chunk), else step."""
    if chunk <= 0:
        return step
    unit = math.lcm(step, chunk)
    return unit if unit <= limit else step


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _pair_sum(array: np.ndarray, axis: int) -> np.ndarray:
    """Sums of neighbouring pairs along `axis`; an odd last element stays alone."""
    array = np.moveaxis(array, axis, 0)
    n = array.shape[0]
    out = array[0 : n - 1 : 2] + array[1:n:2]
    if n % 2:
        out = np.concatenate([out, array[n - 1 : n]], axis=0)
    return np.moveaxis(out, 0, axis)


def _cast(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    return mean.astype(dtype)
