"""Decoded chunks (tiles) of a compressed input, kept a little while for the windows that share them.

A compressed TIFF or Zarr chunk is decoded whole, whatever part of it a read asks for, and neither zarr
nor tifffile keeps it. The engine reads model-input-sized windows in tree order, so the windows that cut
one tile come together (a 512 px tile holds four 256 px windows): without this cache each tile was
decoded four times (measured on a Deflate-tiled 4096^2 TIFF: 1.5 ms per window read, most of it
decoding). Memory is bounded by TILE_CACHE_BYTES, enough for the tiles of the reads in flight (a batch
and the next, in tree order); reads of many tiles (coarse levels, large regions) bypass the cache, as do
tiles too large to keep several of.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

# Decoded tiles kept per open image (least recently used dropped first).
TILE_CACHE_BYTES = 16 << 20
# A read touching more tiles than this goes straight to the file: it is not a window that shares its
# tiles with the next reads, and caching it would only push out tiles that are.
MAX_TILES_PER_CACHED_READ = 4

# (y0, x0, y1, x1) of a level -> raw samples (h, w, bands)
RegionReader = Callable[[int, int, int, int], np.ndarray]


class TileCache:
    """The decoded tiles of an image's levels, shared by its reader threads."""

    def __init__(self, max_bytes: int = TILE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, int, int], threading.Event] = {}
        self.decoded = 0  # tiles read from the file (a test counts them)

    def region(
        self,
        level: int,
        tile: tuple[int, int],
        level_shape: tuple[int, int],
        box: tuple[int, int, int, int],
        read: RegionReader,
        bytes_per_pixel: int,
    ) -> np.ndarray:
        """Samples (y1 - y0, x1 - x0, bands) of `box` = (y0, x0, y1, x1) on a level of `level_shape` stored
        in tiles of `tile` pixels; `read(y0, x0, y1, x1)` reads a region from the file."""
        y0, x0, y1, x1 = box
        tile_h, tile_w = tile
        rows = range(y0 // tile_h, (y1 - 1) // tile_h + 1)
        cols = range(x0 // tile_w, (x1 - 1) // tile_w + 1)
        tile_bytes = tile_h * tile_w * bytes_per_pixel
        if len(rows) * len(cols) > MAX_TILES_PER_CACHED_READ or tile_bytes * MAX_TILES_PER_CACHED_READ > self.max_bytes:
            return read(y0, x0, y1, x1)
        height, width = level_shape
        out: np.ndarray | None = None
        for row in rows:
            for col in cols:
                ty0, tx0 = row * tile_h, col * tile_w
                ty1, tx1 = min(ty0 + tile_h, height), min(tx0 + tile_w, width)
                data = self._tile((level, row, col), lambda: read(ty0, tx0, ty1, tx1))
                if out is None:
                    out = np.empty((y1 - y0, x1 - x0, data.shape[2]), dtype=data.dtype)
                oy0, ox0, oy1, ox1 = max(y0, ty0), max(x0, tx0), min(y1, ty1), min(x1, tx1)
                out[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = data[oy0 - ty0 : oy1 - ty0, ox0 - tx0 : ox1 - tx0]
        assert out is not None
        return out

    def _tile(self, key: tuple[int, int, int], load: Callable[[], np.ndarray]) -> np.ndarray:
        """One tile from the cache, or loaded once: a thread that wants a tile another is loading waits."""
        while True:
            with self._lock:
                data = self._tiles.get(key)
                if data is not None:
                    self._tiles.move_to_end(key)
                    return data
                waiting = self._loading.get(key)
                if waiting is None:
                    done = self._loading[key] = threading.Event()
                    break
            waiting.wait()  # loaded by another thread (or it failed: then try ourselves)
        try:
            data = load()
            data.flags.writeable = False  # shared by every window that cuts it
            with self._lock:
                self.decoded += 1
                self._tiles[key] = data
                self._bytes += data.nbytes
                while self._bytes > self.max_bytes and len(self._tiles) > 1:
                    _, dropped = self._tiles.popitem(last=False)
                    self._bytes -= dropped.nbytes
            return data
        finally:
            with self._lock:
                del self._loading[key]
            done.set()
