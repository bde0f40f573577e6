"""The decoded-tile cache (magnet_cli/io/tile_cache.py): the same samples as reading the file, each tile
decoded once while it is kept, bounded memory, one decode when threads want the same tile."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from magnet_cli.io.tile_cache import MAX_TILES_PER_CACHED_READ, TileCache

LEVEL = np.arange(150 * 130 * 2, dtype=np.uint16).reshape(150, 130, 2)  # edge tiles are partial
TILE = (64, 48)


class File:
    """A level stored in tiles: records every region read from it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.reads: list[tuple[int, int, int, int]] = []
        self.delay = delay
        self._lock = threading.Lock()

    def read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        time.sleep(self.delay)
        with self._lock:
            self.reads.append((y0, x0, y1, x1))
        return LEVEL[y0:y1, x0:x1].copy()


def region(cache: TileCache, file: File, box: tuple[int, int, int, int]) -> np.ndarray:
    return cache.region(0, TILE, LEVEL.shape[:2], box, file.read, LEVEL.itemsize * LEVEL.shape[2])


def test_regions_equal_the_file_and_each_tile_is_decoded_once():
    cache, file = TileCache(), File()
    generator = np.random.default_rng(0)
    for _ in range(200):
        y0, x0 = int(generator.integers(0, 149)), int(generator.integers(0, 129))
        y1, x1 = int(generator.integers(y0 + 1, min(150, y0 + 70) + 1)), int(generator.integers(x0 + 1, min(130, x0 + 50) + 1))
        np.testing.assert_array_equal(region(cache, file, (y0, x0, y1, x1)), LEVEL[y0:y1, x0:x1])
    whole_tiles = [r for r in file.reads if r[0] % TILE[0] == 0 and r[1] % TILE[1] == 0]
    assert len(whole_tiles) == len(set(whole_tiles)) == cache.decoded <= 3 * 3  # a 150 x 130 level has 9 tiles
    assert (128, 96, 150, 130) in whole_tiles  # the corner tile, cut at the level's edge


def test_a_read_of_many_tiles_goes_straight_to_the_file():
    cache, file = TileCache(), File()
    box = (0, 0, 150, 130)  # 9 tiles
    assert 9 > MAX_TILES_PER_CACHED_READ
    np.testing.assert_array_equal(region(cache, file, box), LEVEL)
    assert file.reads == [box] and cache.decoded == 0


def test_memory_stays_within_the_bound():
    big = np.arange(640 * 480, dtype=np.uint8).reshape(640, 480, 1)  # 100 tiles
    tile_bytes = TILE[0] * TILE[1]
    cache = TileCache(max_bytes=4 * MAX_TILES_PER_CACHED_READ * tile_bytes)  # 16 tiles
    for y in range(0, 640, 32):
        for x in range(0, 480, 32):
            got = cache.region(0, TILE, (640, 480), (y, x, y + 32, x + 32), lambda *b: big[b[0] : b[2], b[1] : b[3]].copy(), 1)
            np.testing.assert_array_equal(got, big[y : y + 32, x : x + 32])
            assert cache._bytes <= cache.max_bytes
    assert cache.decoded == 100 and len(cache._tiles) == 16
    small, file = TileCache(max_bytes=tile_bytes), File()  # too small to keep several tiles: not used
    region(small, file, (0, 0, 10, 10))
    assert small.decoded == 0 and file.reads == [(0, 0, 10, 10)]


def test_threads_wanting_one_tile_decode_it_once():
    cache, file = TileCache(), File(delay=0.05)
    boxes = [(y, x, y + 8, x + 8) for y in (0, 20, 40) for x in (0, 16, 32)]  # all inside tile (0, 0)
    with ThreadPoolExecutor(max_workers=len(boxes)) as pool:
        results = list(pool.map(lambda box: region(cache, file, box), boxes))
    for box, got in zip(boxes, results):
        np.testing.assert_array_equal(got, LEVEL[box[0] : box[2], box[1] : box[3]])
    assert file.reads == [(0, 0, 64, 48)]


def test_a_failed_decode_is_raised_and_not_kept():
    cache, calls = TileCache(), []

    def failing(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        calls.append((y0, x0))
        raise ValueError("corrupt tile")

    for _ in range(2):
        with pytest.raises(ValueError, match="corrupt tile"):
            cache.region(0, TILE, LEVEL.shape[:2], (1, 1, 5, 5), failing, 4)
    assert calls == [(0, 0), (0, 0)] and cache.decoded == 0


def test_cached_tiles_cannot_be_changed_by_a_caller():
    cache, file = TileCache(), File()
    first = region(cache, file, (0, 0, 10, 10))
    first[:] = 0  # the caller's own copy
    np.testing.assert_array_equal(region(cache, file, (0, 0, 10, 10)), LEVEL[:10, :10])
