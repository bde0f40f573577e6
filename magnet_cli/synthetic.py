"""Deterministic synthetic benchmark scenes: a seed gives an unbounded landscape, any region renders on its own.

Every pixel is a pure function of (seed, y, x): smooth fields come from coordinate-hashed value noise,
lakes and roads from hashed lattices, houses from a hashed grid, textures from periodic tiles indexed by
absolute coordinates; only exact float operations (+ - * / sqrt floor) touch per-pixel values. So a
region renders to the same bytes whichever way a scene is tiled, a 100k x 100k scene needs no storage
until written, and a scene of size (h, w) is the top-left corner of every larger scene of the same seed.
Feature sizes are in full-resolution pixels, whatever the scene size.

Classes (`SYNTH_CLASSES`; id, name, mask colour) and the scale each one needs:

  0 meadow      (86, 150, 60)   grass photo texture, green. The background; easy at any scale.
  1 water       (40, 110, 220)  one lake of radius 300-700 px (noise-warped shore) per 2560 px lattice
                                cell, blue ripples. Easy at any scale.
  2 farmland    (230, 170, 40)  gravel photo texture tinted brown, in blobs of a few hundred to a few
                                thousand px; a meadow belt keeps it from floodplain, and so ~400 px or
                                more from any water.
  3 floodplain  (200, 80, 200)  the SAME texture and tint as farmland, but only as a band about 420 px
                                wide around every lake. Farmland and floodplain differ only in their
                                large-scale arrangement (does this soil ring a lake?): a 256-512 px window
                                inside either sees brown soil and nothing else. Context classes, which
                                `patch` gets wrong and the coarse whole-image view decides.
  4 road        (250, 250, 250) roads 2-6 px wide (one width per road) joining jittered junctions ~768 px
                                apart, bending curves drawn by distance to a polyline over every area
                                class (bridges over lakes). Gone at 8x downsampling: thin structures
                                which `downsample` loses and the fine windows recover.
  5 building    (220, 30, 30)   houses of 8-20 px a side (brick photo texture, four roof tints), at most
                                one per 40 px grid cell, clustered in villages, never on water or touching
                                a road. Small objects which downsampling erases.

Slide-like scenes (`SceneSpec.blank`, `magnet synth --blank 0.75`): the same landscape shows only on
"tissue" islands, one noise-warped disc per ISLAND_CELL lattice cell sized so that about `blank` of the
plane is empty "glass": a flat near-white with faint per-pixel noise, masked with IGNORE_VALUE (no
class), as whole-slide scans are mostly blank glass and mosaics have no-data borders. The benchmark
uses them to measure `--background`.

Photographic textures are scikit-image's bundled `grass`, `gravel` and `brick` images, mirror-tiled
into seamless 1024 px tiles; houses and roads are equally common on farmland and floodplain, so
nothing local tells those two apart.

API: `render_region(spec, y0, x0, y1, x1)` -> (image, mask); `write_scene(spec, images_dir, masks_dir,
name, fmt)` writes one scene block by block; `synth(outdir, ...)` is `magnet synth`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from magnet_cli.classes import ClassInfo, classes_to_records
from magnet_cli.errors import OutputError, UsageError
from magnet_cli.settings import MAX_SEED, RunSettings, check_whole_number

SYNTH_CLASSES: list[ClassInfo] = [
    ClassInfo("meadow", (86, 150, 60)),
    ClassInfo("water", (40, 110, 220)),
    ClassInfo("farmland", (230, 170, 40)),
    ClassInfo("floodplain", (200, 80, 200)),
    ClassInfo("road", (250, 250, 250)),
    ClassInfo("building", (220, 30, 30)),
]
MEADOW, WATER, FARMLAND, FLOODPLAIN, ROAD, BUILDING = range(6)
SCENE_VERSION = 1  # bump when any pixel of any scene changes
FORMATS = {"png": ".png", "tiff": ".tif", "zarr": ".zarr"}
MAX_COUNT = 100_000
MAX_SIDE = 1 << 19  # so TIFF_TILE x BLOCK_WIDTH blocks map onto whole pixels of every pyramid level
PNG_MAX_SIDE = 16384  # PNG is written from one array in memory
BIGTIFF_BYTES = 2**31  # classic TIFF offsets are 32-bit; beyond this (uncompressed) size write BigTIFF
TIFF_TILE = 512
TIFF_MIN_LEVEL = 1024  # the image pyramid halves down to this long side
TIFF_BUFFER = 32 << 20  # bytes of tiles tifffile pulls ahead to compress in parallel
ZARR_CHUNK = 1024
IGNORE_VALUE = 255  # mask value of pixels with no class (the glass of slide-like scenes)
BLOCK_WIDTH = 4096  # render blocks are (tile or chunk rows) x this, so memory does not grow with the scene

# -- scene geometry, all in full-resolution pixels ------------------------------------------------
GRID = 16  # smooth fields are evaluated on an absolute grid of this step and interpolated bilinearly
LAKE_CELL = 2560  # one lake per cell of this lattice, centred in the middle 60% of its cell
LAKE_RADIUS = (300.0, 700.0)
LAKE_WARP = 160.0  # max shift of a shore by noise
FLOOD_WIDTH = 420.0  # floodplain: 0 <= warped distance beyond the shore < FLOOD_WIDTH
FLOOD_GAP = 110.0  # a meadow belt between floodplain and farmland, so no soil patch touches both
LAKE_CAP = FLOOD_WIDTH + FLOOD_GAP + 128.0  # distances beyond this all mean "far from water" (well past the
# farmland threshold, so capped grid values never bend its contour)
LAKE_REACH = LAKE_RADIUS[1] + LAKE_WARP + LAKE_CAP
FARM_WAVELENGTHS = ((1100.0, 0.7), (380.0, 0.3))
FARM_THRESHOLD = 0.56
ROAD_CELL = 768  # road junctions: a lattice of this step, jittered by +-30%
ROAD_EDGE_PROBABILITY = 0.7
ROAD_WIDTHS = (2, 6)
ROAD_SEGMENTS = 24  # polyline pieces per road between two junctions
ROAD_BEND = 0.8
HOUSE_CELL = 40
HOUSE_SIZE = (8, 20)
HOUSE_MARGIN = 3  # houses keep this far inside their cell, so two never touch
VILLAGE_WAVELENGTH = 1700.0
TEXTURE_PERIOD = 1024
ISLAND_CELL = 4096  # slide-like scenes: one tissue island (a compact section, as on a slide) per cell of this lattice
ISLAND_WARP = 120.0  # max shift of an island's edge by noise
ISLAND_JITTER = 0.3  # island centres lie within +-this fraction of the cell around its middle
GLASS = (236, 234, 240)  # the blank glass colour of slide-like scenes
GLASS_NOISE = 3  # glass pixels vary by 0..this in each channel, as a scanner's sensor noise does

# Hash salts: one per independent random quantity.
(_S_LAKE_Y, _S_LAKE_X, _S_LAKE_R, _S_WARP1, _S_WARP2, _S_FARM1, _S_FARM2, _S_NODE_Y, _S_NODE_X, _S_RIGHT,
 _S_DOWN, _S_BEND0, _S_BEND1, _S_WIDTH, _S_HOUSE, _S_PRESENT, _S_VILLAGE, _S_TEXTURE, _S_WATER,
 _S_ISLAND_Y, _S_ISLAND_X, _S_ISLAND_WARP, _S_GLASS) = range(1, 24)


@dataclass(frozen=True)
class SceneSpec:
    """A scene: the seed decides every pixel; height and width only bound it. `blank` > 0 makes it
    slide-like: about that fraction of it is empty glass around islands of the landscape."""

    seed: int
    height: int
    width: int
    blank: float = 0.0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise UsageError(f"a scene needs a positive size, got {self.height}x{self.width}")
        if not 0.0 <= self.blank < 1.0:
            raise UsageError(f"--blank {self.blank}: expected a fraction in [0, 1)")


# -- hashing and noise: pure functions of integer coordinates ------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


def _hash(seed: int, salt: int, *coords: Any) -> np.ndarray:
    """A uint64 hash of (seed, salt, integer coordinate arrays), broadcast together."""
    with np.errstate(over="ignore"):
        h = _mix(np.atleast_1d(np.uint64(seed % (1 << 64)) ^ np.uint64(salt)))
        for c in coords:
            h = _mix(h ^ np.atleast_1d(np.asarray(c)).astype(np.int64).astype(np.uint64))
    return h


def _uniform(seed: int, salt: int, *coords: Any) -> np.ndarray:
    """Floats uniform in [0, 1), one per broadcast coordinate tuple."""
    return (_hash(seed, salt, *coords) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _value_noise(seed: int, salt: int, ys: np.ndarray, xs: np.ndarray, wavelength: float) -> np.ndarray:
    """Smooth noise in [0, 1] at absolute coordinates (broadcast float arrays), lattice step `wavelength`."""
    fy, fx = ys / wavelength, xs / wavelength
    iy, ix = np.floor(fy), np.floor(fx)
    ty, tx = fy - iy, fx - ix
    sy, sx = ty * ty * (3.0 - 2.0 * ty), tx * tx * (3.0 - 2.0 * tx)
    v00 = _uniform(seed, salt, iy, ix)
    v01 = _uniform(seed, salt, iy, ix + 1)
    v10 = _uniform(seed, salt, iy + 1, ix)
    v11 = _uniform(seed, salt, iy + 1, ix + 1)
    top = v00 + (v01 - v00) * sx
    bottom = v10 + (v11 - v10) * sx
    return top + (bottom - top) * sy


# -- the area classes: lakes, floodplain, farmland ----------------------------------------------------
def _lake_field(seed: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Warped distance (px) beyond the nearest lake shore, negative in water, capped at LAKE_CAP.

    Lakes farther than LAKE_REACH cannot bring a value under the cap, so enumerating only the lakes near
    the given points gives the same values whatever else is evaluated with them.
    """
    ys, xs = np.broadcast_arrays(np.asarray(ys, np.float64), np.asarray(xs, np.float64))
    a = np.arange(math.floor((ys.min() - LAKE_REACH) / LAKE_CELL), math.floor((ys.max() + LAKE_REACH) / LAKE_CELL) + 1)
    b = np.arange(math.floor((xs.min() - LAKE_REACH) / LAKE_CELL), math.floor((xs.max() + LAKE_REACH) / LAKE_CELL) + 1)
    cells_a, cells_b = (c.ravel() for c in np.meshgrid(a, b, indexing="ij"))
    centre_y = (cells_a + 0.2 + 0.6 * _uniform(seed, _S_LAKE_Y, cells_a, cells_b)) * LAKE_CELL
    centre_x = (cells_b + 0.2 + 0.6 * _uniform(seed, _S_LAKE_X, cells_a, cells_b)) * LAKE_CELL
    radius = LAKE_RADIUS[0] + (LAKE_RADIUS[1] - LAKE_RADIUS[0]) * _uniform(seed, _S_LAKE_R, cells_a, cells_b)
    nearest = np.full(ys.shape, np.inf)
    for cy, cx, r in zip(centre_y.tolist(), centre_x.tolist(), radius.tolist()):
        np.minimum(nearest, np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) - r, out=nearest)
    warp = LAKE_WARP * (
        0.7 * (2.0 * _value_noise(seed, _S_WARP1, ys, xs, 640.0) - 1.0)
        + 0.3 * (2.0 * _value_noise(seed, _S_WARP2, ys, xs, 230.0) - 1.0)
    )
    return np.minimum(nearest + warp, LAKE_CAP)


def _farm_field(seed: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Smooth noise in [0, 1]: farmland where it exceeds FARM_THRESHOLD (and water is far)."""
    (w1, a1), (w2, a2) = FARM_WAVELENGTHS
    return a1 * _value_noise(seed, _S_FARM1, ys, xs, w1) + a2 * _value_noise(seed, _S_FARM2, ys, xs, w2)


def _upsample(nodes: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Bilinear interpolation of values on the absolute GRID (nodes[0, 0] at (y0 // GRID, x0 // GRID))
    at every pixel of the region; each pixel's arithmetic depends only on its own coordinates."""
    xs = np.arange(x0, x1)
    col = xs // GRID - x0 // GRID
    tx = ((xs % GRID) / GRID).astype(np.float32)
    rows = nodes[:, col] + (nodes[:, col + 1] - nodes[:, col]) * tx  # (node rows, w)
    out = np.empty((y1 - y0, x1 - x0), np.float32)
    ty = ((np.arange(y0, y1) % GRID) / GRID).astype(np.float32)[:, None]
    first = y0 // GRID
    for node_row in range(first, (y1 - 1) // GRID + 1):
        a, b = max(y0, node_row * GRID) - y0, min(y1, (node_row + 1) * GRID) - y0
        j = node_row - first
        np.multiply(ty[a:b], rows[j + 1] - rows[j], out=out[a:b])
        out[a:b] += rows[j]
    return out


def _area_classes(seed: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Class ids of meadow, water, farmland and floodplain for every pixel of the region."""
    gy = np.arange(y0 // GRID, (y1 - 1) // GRID + 2, dtype=np.float64)[:, None] * GRID
    gx = np.arange(x0 // GRID, (x1 - 1) // GRID + 2, dtype=np.float64)[None, :] * GRID
    lake = _upsample(_lake_field(seed, gy, gx).astype(np.float32), y0, x0, y1, x1)
    farm = _upsample(_farm_field(seed, gy, gx).astype(np.float32), y0, x0, y1, x1)
    classes = np.where(lake < FLOOD_WIDTH, np.uint8(FLOODPLAIN), np.uint8(MEADOW))
    np.copyto(classes, np.uint8(WATER), where=lake < 0)
    np.copyto(classes, np.uint8(FARMLAND), where=(lake >= FLOOD_WIDTH + FLOOD_GAP) & (farm > FARM_THRESHOLD))
    return classes


def _island_radius(blank: float) -> float:
    """The disc radius that leaves `blank` of each ISLAND_CELL x ISLAND_CELL cell empty."""
    return ISLAND_CELL * math.sqrt((1.0 - blank) / math.pi)


def _island_field(seed: int, blank: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Warped distance (px) beyond the nearest island's edge: tissue where it is below zero."""
    ys, xs = np.broadcast_arrays(np.asarray(ys, np.float64), np.asarray(xs, np.float64))
    reach = ISLAND_CELL  # islands of cells farther than one cell away cannot be the nearest edge
    a = np.arange(math.floor((ys.min() - reach) / ISLAND_CELL), math.floor((ys.max() + reach) / ISLAND_CELL) + 1)
    b = np.arange(math.floor((xs.min() - reach) / ISLAND_CELL), math.floor((xs.max() + reach) / ISLAND_CELL) + 1)
    cells_a, cells_b = (c.ravel() for c in np.meshgrid(a, b, indexing="ij"))
    spread = 2.0 * ISLAND_JITTER
    centre_y = (cells_a + 0.5 - ISLAND_JITTER + spread * _uniform(seed, _S_ISLAND_Y, cells_a, cells_b)) * ISLAND_CELL
    centre_x = (cells_b + 0.5 - ISLAND_JITTER + spread * _uniform(seed, _S_ISLAND_X, cells_a, cells_b)) * ISLAND_CELL
    radius = _island_radius(blank)
    nearest = np.full(ys.shape, np.inf)
    for cy, cx in zip(centre_y.tolist(), centre_x.tolist()):
        np.minimum(nearest, np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) - radius, out=nearest)
    return nearest + ISLAND_WARP * (2.0 * _value_noise(seed, _S_ISLAND_WARP, ys, xs, 300.0) - 1.0)


def _glass(seed: int, blank: float, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """True where a slide-like scene shows empty glass."""
    gy = np.arange(y0 // GRID, (y1 - 1) // GRID + 2, dtype=np.float64)[:, None] * GRID
    gx = np.arange(x0 // GRID, (x1 - 1) // GRID + 2, dtype=np.float64)[None, :] * GRID
    return _upsample(_island_field(seed, blank, gy, gx).astype(np.float32), y0, x0, y1, x1) >= 0


def _paint_glass(image: np.ndarray, mask: np.ndarray, glass: np.ndarray, seed: int, y0: int, x0: int) -> None:
    ys = np.arange(y0, y0 + glass.shape[0])[:, None]
    xs = np.arange(x0, x0 + glass.shape[1])[None, :]
    noise = (_hash(seed, _S_GLASS, ys, xs) % np.uint64(GLASS_NOISE + 1)).astype(np.uint8)
    for channel, value in enumerate(GLASS):
        np.copyto(image[..., channel], np.uint8(value) + noise, where=glass)
    mask[glass] = IGNORE_VALUE


# -- roads ------------------------------------------------------------------------------------------
def _road_segments(seed: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """(n, 5) rows (ya, xa, yb, xb, half_width): the polyline pieces of every road near the region."""
    a = np.arange(y0 // ROAD_CELL - 2, (y1 - 1) // ROAD_CELL + 3)
    b = np.arange(x0 // ROAD_CELL - 2, (x1 - 1) // ROAD_CELL + 3)
    A, B = (c.ravel() for c in np.meshgrid(a, b, indexing="ij"))

    def node(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (
            (i + 0.2 + 0.6 * _uniform(seed, _S_NODE_Y, i, j)) * ROAD_CELL,
            (j + 0.2 + 0.6 * _uniform(seed, _S_NODE_X, i, j)) * ROAD_CELL,
        )

    starts, ends, keys = [], [], []
    for salt, di, dj in ((_S_RIGHT, 0, 1), (_S_DOWN, 1, 0)):
        keep = _uniform(seed, salt, A, B) < ROAD_EDGE_PROBABILITY
        i, j = A[keep], B[keep]
        starts.append(node(i, j))
        ends.append(node(i + di, j + dj))
        keys.append((i * 2 + di, j))  # a distinct key per road
    p0y, p0x = (np.concatenate([s[k] for s in starts]) for k in (0, 1))
    p1y, p1x = (np.concatenate([e[k] for e in ends]) for k in (0, 1))
    ki, kj = (np.concatenate([k[n] for k in keys]) for n in (0, 1))
    bend0 = _uniform(seed, _S_BEND0, ki, kj) - 0.5
    bend1 = _uniform(seed, _S_BEND1, ki, kj) - 0.5
    low, high = ROAD_WIDTHS
    half_width = (low + np.floor(_uniform(seed, _S_WIDTH, ki, kj) * (high - low + 1))) / 2.0

    # A road bends sideways by length * t (1 - t) (c0 + c1 (2t - 1)): polynomials only, exact per element.
    t = np.arange(ROAD_SEGMENTS + 1, dtype=np.float64)[None, :] / ROAD_SEGMENTS
    dy, dx = (p1y - p0y)[:, None], (p1x - p0x)[:, None]
    offset = ROAD_BEND * t * (1.0 - t) * (bend0[:, None] + bend1[:, None] * (2.0 * t - 1.0))
    vy = p0y[:, None] + t * dy + offset * dx  # the normal is (dx, -dy) / length; offset is in units of length
    vx = p0x[:, None] + t * dx - offset * dy
    return np.stack(
        [vy[:, :-1], vx[:, :-1], vy[:, 1:], vx[:, 1:], np.broadcast_to(half_width[:, None], vy[:, 1:].shape)], axis=-1
    ).reshape(-1, 5)


def _near(segments: np.ndarray, y0: float, x0: float, y1: float, x1: float, margin: float) -> np.ndarray:
    """The segments whose bounding box, grown by half width + margin, meets [y0, y1) x [x0, x1)."""
    ya, xa, yb, xb, hw = segments.T
    grow = hw + margin
    keep = (
        (np.minimum(ya, yb) - grow < y1) & (np.maximum(ya, yb) + grow > y0)
        & (np.minimum(xa, xb) - grow < x1) & (np.maximum(xa, xb) + grow > x0)
    )
    return segments[keep]


def _draw_roads(mask: np.ndarray, segments: np.ndarray, y0: int, x0: int) -> None:
    """Mark pixels whose centre lies closer than the half width to a segment."""
    h, w = mask.shape
    for ya, xa, yb, xb, hw in _near(segments, y0, x0, y0 + h, x0 + w, 1.0).tolist():
        r0 = max(y0, math.floor(min(ya, yb) - hw)) - y0
        r1 = min(y0 + h, math.ceil(max(ya, yb) + hw) + 1) - y0
        c0 = max(x0, math.floor(min(xa, xb) - hw)) - x0
        c1 = min(x0 + w, math.ceil(max(xa, xb) + hw) + 1) - x0
        if r0 >= r1 or c0 >= c1:
            continue
        py = np.arange(r0 + y0, r1 + y0, dtype=np.float64)[:, None] + (0.5 - ya)
        px = np.arange(c0 + x0, c1 + x0, dtype=np.float64)[None, :] + (0.5 - xa)
        ey, ex = yb - ya, xb - xa
        t = np.clip((py * ey + px * ex) / max(ey * ey + ex * ex, 1e-12), 0.0, 1.0)
        ry, rx = py - t * ey, px - t * ex
        mask[r0:r1, c0:c1] |= ry * ry + rx * rx < hw * hw


def _clearance(py: np.ndarray, px: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest road edge (centre-line distance less half width)."""
    if len(segments) == 0:
        return np.full(py.shape, np.inf)
    ya, xa, yb, xb, hw = (s[None, :] for s in segments.T)
    ey, ex = yb - ya, xb - xa
    dy, dx = py[:, None] - ya, px[:, None] - xa
    t = np.clip((dy * ey + dx * ex) / np.maximum(ey * ey + ex * ex, 1e-12), 0.0, 1.0)
    ry, rx = dy - t * ey, dx - t * ex
    return (np.sqrt(ry * ry + rx * rx) - hw).min(axis=1)


# -- houses -------------------------------------------------------------------------------------------
def _houses(seed: int, y0: int, x0: int, y1: int, x1: int, segments: np.ndarray) -> np.ndarray:
    """(n, 6) int rows (top, left, height, width, roof, texture offset) of the houses meeting the region."""
    a = np.arange(y0 // HOUSE_CELL, (y1 - 1) // HOUSE_CELL + 1)
    b = np.arange(x0 // HOUSE_CELL, (x1 - 1) // HOUSE_CELL + 1)
    A, B = (c.ravel() for c in np.meshgrid(a, b, indexing="ij"))
    h = _hash(seed, _S_HOUSE, A, B)
    low, high = HOUSE_SIZE
    span = high - low + 1

    def field(shift: int, modulo: int) -> np.ndarray:
        return ((h >> np.uint64(shift)) % np.uint64(modulo)).astype(np.int64)

    height, width = low + field(0, span), low + field(8, span)
    room = HOUSE_CELL - 2 * HOUSE_MARGIN
    top = A * HOUSE_CELL + HOUSE_MARGIN + field(16, 1 << 16) % (room - height + 1)
    left = B * HOUSE_CELL + HOUSE_MARGIN + field(32, 1 << 16) % (room - width + 1)
    roof, texture = field(48, 4), field(50, TEXTURE_PERIOD - high)
    village = _value_noise(seed, _S_VILLAGE, (A + 0.5) * HOUSE_CELL, (B + 0.5) * HOUSE_CELL, VILLAGE_WAVELENGTH)
    density = 0.03 + np.clip((village - 0.5) * 2.5, 0.0, 0.6)
    keep = (
        (_uniform(seed, _S_PRESENT, A, B) < density)
        & (top < y1) & (top + height > y0) & (left < x1) & (left + width > x0)
    )
    houses = np.stack([top, left, height, width, roof, texture], axis=1)[keep]
    if len(houses) == 0:
        return houses
    cy = houses[:, 0] + houses[:, 2] / 2.0
    cx = houses[:, 1] + houses[:, 3] / 2.0
    half_diagonal = np.sqrt(houses[:, 2] ** 2 + houses[:, 3] ** 2) / 2.0
    dry = _lake_field(seed, cy, cx) > half_diagonal + 6.0
    near = _near(segments, y0 - HOUSE_CELL, x0 - HOUSE_CELL, y1 + HOUSE_CELL, x1 + HOUSE_CELL, 0.0)
    clear = _clearance(cy, cx, near) > half_diagonal + 3.0
    return houses[dry & clear]


# -- textures ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _tiles() -> dict[str, np.ndarray]:
    """Seamless TEXTURE_PERIOD x TEXTURE_PERIOD RGB tiles (packed uint32), computed once per process."""
    from scipy import ndimage
    from skimage import data

    def mirror(gray: np.ndarray) -> np.ndarray:
        g = gray.astype(np.float32)
        g = np.concatenate([g, g[::-1]], axis=0)
        return np.concatenate([g, g[:, ::-1]], axis=1)[:TEXTURE_PERIOD, :TEXTURE_PERIOD]

    def tint(gray: np.ndarray, scale: tuple[float, ...], offset: tuple[float, ...]) -> np.ndarray:
        """RGB as one uint32 per pixel (bytes R, G, B, 0), so composing moves whole pixels."""
        rgbx = np.zeros((*gray.shape, 4), np.uint8)
        rgbx[..., :3] = np.clip(np.rint(gray[..., None] * np.float32(scale) + np.float32(offset)), 0, 255)
        return rgbx.view(np.uint32)[..., 0]

    grass, gravel, brick = mirror(data.grass()), mirror(data.gravel()), mirror(data.brick())
    yy, xx = np.mgrid[0:TEXTURE_PERIOD, 0:TEXTURE_PERIOD]
    ripple = ndimage.gaussian_filter(_uniform(0, _S_WATER, yy, xx).astype(np.float32), (1.2, 5.0), mode="wrap")
    ripple = (ripple - ripple.mean()) / ripple.std()
    tiles = {
        "meadow": tint(grass, (0.42, 0.72, 0.28), (20.0, 38.0, 12.0)),
        "soil": tint(gravel, (0.70, 0.52, 0.33), (62.0, 42.0, 22.0)),
        "water": tint(ripple, (5.0, 7.0, 9.0), (32.0, 72.0, 118.0)),
        "road": tint(gravel, (0.22, 0.22, 0.22), (70.0, 70.0, 74.0)),
    }
    roofs = [((0.85, 0.42, 0.30), (45, 18, 10)), ((0.55, 0.55, 0.60), (40, 40, 46)),
             ((0.60, 0.25, 0.22), (30, 8, 8)), ((0.80, 0.70, 0.55), (60, 50, 38))]
    for k, (scale, offset) in enumerate(roofs):
        tiles[f"roof{k}"] = tint(brick, scale, offset)
    return tiles


def _paste(out: np.ndarray, tile: np.ndarray, y0: int, x0: int, where: np.ndarray | None) -> None:
    """Copy the periodic tile, anchored at absolute (0, 0), into `out` (the region at (y0, x0))."""
    h, w = out.shape
    period = tile.shape[0]
    y = 0
    while y < h:
        ty = (y0 + y) % period
        dy = min(h - y, period - ty)
        x = 0
        while x < w:
            tx = (x0 + x) % period
            dx = min(w - x, period - tx)
            src = tile[ty : ty + dy, tx : tx + dx]
            if where is None:
                out[y : y + dy, x : x + dx] = src
            else:
                np.copyto(out[y : y + dy, x : x + dx], src, where=where[y : y + dy, x : x + dx])
            x += dx
        y += dy


# -- rendering -------------------------------------------------------------------------------------
def render_region(spec: SceneSpec, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """The image (h, w, 3) uint8 and class-id mask (h, w) uint8 of rows y0:y1, columns x0:x1 of a scene."""
    if not (0 <= y0 < y1 <= spec.height and 0 <= x0 < x1 <= spec.width):
        raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] outside a scene of {spec.height}x{spec.width}")
    seed = spec.seed
    mask = _area_classes(seed, y0, x0, y1, x1)
    segments = _road_segments(seed, y0, x0, y1, x1)
    road = np.zeros(mask.shape, bool)
    _draw_roads(road, segments, y0, x0)
    houses = _houses(seed, y0, x0, y1, x1, segments)

    tiles = _tiles()
    oy, ox = (int(v) for v in _hash(seed, _S_TEXTURE, [0, 1]) % np.uint64(TEXTURE_PERIOD))
    ty, tx = y0 + oy, x0 + ox  # per-seed texture origin
    packed = np.empty(mask.shape, np.uint32)
    _paste(packed, tiles["meadow"], ty, tx, None)
    _paste(packed, tiles["soil"], ty, tx, mask >= FARMLAND)  # farmland and floodplain: one texture
    _paste(packed, tiles["water"], ty, tx, mask == WATER)
    _paste(packed, tiles["road"], ty, tx, road)
    np.copyto(mask, np.uint8(ROAD), where=road)
    for top, left, height, width, roof, offset in houses.tolist():
        r0, r1 = max(top, y0), min(top + height, y1)
        c0, c1 = max(left, x0), min(left + width, x1)
        mask[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = BUILDING
        src = tiles[f"roof{roof}"][offset + r0 - top : offset + r1 - top, offset + c0 - left : offset + c1 - left]
        packed[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = src
    image = np.empty((*mask.shape, 3), np.uint8)
    image[...] = packed.view(np.uint8).reshape(*mask.shape, 4)[..., :3]
    if spec.blank > 0:
        _paint_glass(image, mask, _glass(seed, spec.blank, y0, x0, y1, x1), seed, y0, x0)
    return image, mask


# -- writing -----------------------------------------------------------------------------------------
def scene_name(seed: int, index: int) -> str:
    """File stem of scene `index` of a `synth` call with base `seed` (its own seed is seed + index)."""
    return f"scene_s{seed}_{index}"


def image_levels(height: int, width: int) -> list[tuple[int, int]]:
    """Shapes of the TIFF image pyramid: halve (rounding up) until the long side is <= TIFF_MIN_LEVEL."""
    from magnet_cli.io.labels import level_shapes

    return level_shapes(height, width, TIFF_MIN_LEVEL)


def write_scene(
    spec: SceneSpec,
    images_dir: str | Path,
    masks_dir: str | Path,
    name: str,
    fmt: str = "tiff",
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[Path, Path]:
    """Write one scene as `images_dir/<name>.<ext>` (RGB) and `masks_dir/<name>.<ext>` (class ids).

    Rendered block by block, so memory does not grow with the scene (PNG, for small scenes, excepted).
    `progress` is called with the pixel count of each finished piece of work (see `scene_work`).
    """
    ext = _extension(fmt)
    _check_size(spec.height, spec.width, fmt)
    image_path, mask_path = Path(images_dir) / f"{name}{ext}", Path(masks_dir) / f"{name}{ext}"
    if not overwrite:
        for path in (image_path, mask_path):
            _refuse_existing(path)
    advance = progress or (lambda pixels: None)
    metadata = {
        "generator": "magnet synth",
        "scene_version": SCENE_VERSION,
        "seed": spec.seed,
        "height": spec.height,
        "width": spec.width,
        "classes": [c.name for c in SYNTH_CLASSES],
        **({"blank": spec.blank, "ignore_value": IGNORE_VALUE} if spec.blank else {}),
    }
    writer = {"png": _write_png, "tiff": _write_tiff, "zarr": _write_zarr}[fmt]
    writer(spec, image_path, mask_path, metadata, advance)
    return image_path, mask_path


def scene_work(spec: SceneSpec, fmt: str) -> int:
    """Total of the pixel counts `write_scene` reports to its `progress` callback."""
    pixels = spec.height * spec.width
    if fmt == "tiff":  # render level 0, write each smaller image level, write the mask
        return 2 * pixels + sum(h * w for h, w in image_levels(spec.height, spec.width)[1:])
    return pixels


def synth(
    outdir: str | Path,
    *,
    size: int | tuple[int, int] = 4096,
    seed: int = 0,
    count: int = 1,
    format: str = "tiff",
    blank: float = 0.0,
    run: RunSettings | None = None,
) -> list[tuple[Path, Path]]:
    """Render `count` scenes (seeds seed, seed + 1, ...) into OUTDIR/images, OUTDIR/masks and
    OUTDIR/classes.json, the dataset layout training, `evaluate` and `benchmark` read. `blank` > 0
    makes slide-like scenes (that fraction empty glass, masked IGNORE_VALUE)."""
    from magnet_cli.io.labels import replace_file_atomically
    from magnet_cli.progress import progress_enabled

    run = run or RunSettings()
    overwrite, progress, fmt = run.overwrite, run.progress, format
    height, width = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    check_whole_number(count, "--count", 1, MAX_COUNT)
    check_whole_number(seed, "--seed", 0, MAX_SEED - count)
    ext = _extension(fmt)
    _check_size(height, width, fmt)
    SceneSpec(seed, height, width, blank)  # refuses a bad --blank before anything is written
    outdir = Path(outdir)
    images_dir, masks_dir = outdir / "images", outdir / "masks"
    names = [scene_name(seed, i) for i in range(count)]
    classes_path = outdir / "classes.json"
    classes_text = json.dumps(classes_to_records(SYNTH_CLASSES), indent=1) + "\n"
    write_classes = overwrite or not _same_text(classes_path, classes_text)
    if not overwrite:  # refuse before anything is written
        for name in names:
            for folder in (images_dir, masks_dir):
                _refuse_existing(folder / f"{name}{ext}")
        if write_classes:
            _refuse_existing(classes_path)
    for folder in (outdir, images_dir, masks_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create folder {folder}: {error.strerror or error}") from None
    if write_classes:
        with replace_file_atomically(classes_path) as temporary:
            temporary.write_text(classes_text, encoding="utf-8")

    pairs = []
    with _Bars(progress_enabled(progress)) as bars:
        for index, name in enumerate(names):
            spec = SceneSpec(seed + index, height, width, blank)
            advance = bars.add(f"{name} ({height}x{width} {fmt})", scene_work(spec, fmt))
            pairs.append(write_scene(spec, images_dir, masks_dir, name, fmt, overwrite=overwrite, progress=advance))
    return pairs


def _extension(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    return FORMATS[fmt]


def _check_size(height: int, width: int, fmt: str) -> None:
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise UsageError(f"--size {height}x{width}: each side must be between 1 and {MAX_SIDE}")
    if fmt == "png" and max(height, width) > PNG_MAX_SIDE:
        raise UsageError(
            f"a {height}x{width} scene is too large for PNG (long side at most {PNG_MAX_SIDE}); "
            "use --format tiff or zarr"
        )


def _refuse_existing(path: Path) -> None:
    if os.path.lexists(path):
        raise OutputError(f"{path} already exists; pass --overwrite to replace it")


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.is_file() and path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def _blocks(height: int, width: int, rows: int) -> Iterator[tuple[int, int, int, int]]:
    """Row-major blocks (y0, x0, y1, x1) of `rows` x BLOCK_WIDTH pixels covering the scene."""
    for y in range(0, height, rows):
        for x in range(0, width, BLOCK_WIDTH):
            yield y, x, min(y + rows, height), min(x + BLOCK_WIDTH, width)


def reduce_into(levels: list[Any], block: np.ndarray, y0: int, x0: int) -> None:
    """Store the block's share of every smaller pyramid level: level k pixel (i, j) is the rounded mean
    of the level-0 pixels [i 2^k, (i+1) 2^k) x [j 2^k, (j+1) 2^k) that exist (the convention of
    `io.pyramid_cache`); y0 and x0 are multiples of 2^k, so the block covers whole level-k pixels."""
    sums = block.astype(np.uint32)
    counts = np.ones(block.shape[:2], np.uint32)
    for k, level in enumerate(levels, start=1):
        odd = (0, sums.shape[0] % 2), (0, sums.shape[1] % 2)
        if odd != ((0, 0), (0, 0)):  # a zero row or column that counts for nothing
            sums, counts = np.pad(sums, (*odd, (0, 0))), np.pad(counts, odd)
        sums = sums[0::2, 0::2] + sums[1::2, 0::2] + sums[0::2, 1::2] + sums[1::2, 1::2]
        counts = counts[0::2, 0::2] + counts[1::2, 0::2] + counts[0::2, 1::2] + counts[1::2, 1::2]
        mean = np.rint(sums / counts[..., None]).astype(np.uint8)
        level[y0 >> k : (y0 >> k) + mean.shape[0], x0 >> k : (x0 >> k) + mean.shape[1]] = mean


def _write_png(spec: SceneSpec, image_path: Path, mask_path: Path, metadata: dict, advance: Callable) -> None:
    import imagecodecs

    from magnet_cli.io.labels import replace_file_atomically

    image = np.empty((spec.height, spec.width, 3), np.uint8)
    mask = np.empty((spec.height, spec.width), np.uint8)
    for y0, x0, y1, x1 in _blocks(spec.height, spec.width, ZARR_CHUNK):
        image[y0:y1, x0:x1], mask[y0:y1, x0:x1] = render_region(spec, y0, x0, y1, x1)
        advance((y1 - y0) * (x1 - x0))
    for path, array in ((image_path, image), (mask_path, mask)):
        with replace_file_atomically(path) as temporary:
            temporary.write_bytes(imagecodecs.png_encode(array))


def _write_tiff(spec: SceneSpec, image_path: Path, mask_path: Path, metadata: dict, advance: Callable) -> None:
    """Level 0 is rendered a block of tile rows at a time; the smaller levels (box averages of each block)
    and the mask wait in scratch files beside the output until their turn to be written."""
    import tifffile
    import zarr

    from magnet_cli.io.labels import replace_file_atomically

    height, width = spec.height, spec.width
    shapes = image_levels(height, width)
    options = dict(
        dtype=np.uint8, tile=(TIFF_TILE, TIFF_TILE), compression="zlib", compressionargs={"level": 4},
        metadata=None, maxworkers=2, buffersize=TIFF_BUFFER,
    )
    description = json.dumps({"magnet_synth": metadata})
    with tempfile.TemporaryDirectory(prefix=f".{image_path.stem}.scratch-", dir=image_path.parent) as scratch:

        def scratch_array(name: str, shape: tuple[int, ...], k: int) -> Any:
            """Compressed, so memory stays flat; a chunk per level-0 block where that is not tiny."""
            rows, cols = max(TIFF_TILE >> k, 128), max(BLOCK_WIDTH >> k, 1024)
            chunks = (min(rows, shape[0]), min(cols, shape[1]), *shape[2:])
            path = str(Path(scratch) / f"{name}.zarr")
            return zarr.create_array(store=path, shape=shape, chunks=chunks, dtype=np.uint8, fill_value=0)

        smaller = [scratch_array(f"level{k}", (*shape, 3), k) for k, shape in enumerate(shapes[1:], start=1)]
        mask = scratch_array("mask", (height, width), 0)

        def rendered() -> Iterator[np.ndarray]:
            for y0, x0, y1, x1 in _blocks(height, width, TIFF_TILE):
                image, mask[y0:y1, x0:x1] = render_region(spec, y0, x0, y1, x1)
                reduce_into(smaller, image, y0, x0)
                advance((y1 - y0) * (x1 - x0))
                yield from _split(image)  # tifffile stops pulling after the last tile: nothing may follow

        with replace_file_atomically(image_path) as temporary:
            with tifffile.TiffWriter(temporary, bigtiff=4 * height * width > BIGTIFF_BYTES) as tif:
                tif.write(
                    rendered(), shape=(height, width, 3), photometric="rgb", subifds=len(smaller) or None,
                    description=description, software="magnet-cli", **options,
                )
                for level in smaller:
                    tif.write(_stored(level, advance), shape=level.shape, photometric="rgb", subfiletype=1, **options)
        with replace_file_atomically(mask_path) as temporary:
            tifffile.imwrite(
                temporary, _stored(mask, advance), shape=(height, width), photometric="minisblack",
                description=description, software="magnet-cli", bigtiff=height * width > BIGTIFF_BYTES, **options,
            )


def _split(block: np.ndarray) -> Iterator[np.ndarray]:
    """The TIFF tiles of one block of whole tile rows (tifffile pads the incomplete ones)."""
    for x in range(0, block.shape[1], TIFF_TILE):
        yield block[:, x : x + TIFF_TILE]


def _stored(level: np.ndarray, advance: Callable) -> Iterator[np.ndarray]:
    """The tiles of a scratch array, a block at a time."""
    for y0, x0, y1, x1 in _blocks(level.shape[0], level.shape[1], TIFF_TILE):
        advance((y1 - y0) * (x1 - x0))
        yield from _split(np.asarray(level[y0:y1, x0:x1]))


def _write_zarr(spec: SceneSpec, image_path: Path, mask_path: Path, metadata: dict, advance: Callable) -> None:
    import zarr

    height, width = spec.height, spec.width
    chunk = min(ZARR_CHUNK, height), min(ZARR_CHUNK, width)
    with _replaced_folder(image_path) as image_store, _replaced_folder(mask_path) as mask_store:
        image = zarr.create_array(
            store=str(image_store), shape=(height, width, 3), chunks=(*chunk, 3), dtype=np.uint8, fill_value=0,
            dimension_names=("y", "x", "c"), attributes={"magnet_synth": metadata}, zarr_format=3,
        )
        mask = zarr.create_array(
            store=str(mask_store), shape=(height, width), chunks=chunk, dtype=np.uint8, fill_value=0,
            dimension_names=("y", "x"), zarr_format=3,
            attributes={"magnet_synth": metadata, "classes": classes_to_records(SYNTH_CLASSES)},
        )
        for y0, x0, y1, x1 in _blocks(height, width, ZARR_CHUNK):
            image[y0:y1, x0:x1], mask[y0:y1, x0:x1] = render_region(spec, y0, x0, y1, x1)
            advance((y1 - y0) * (x1 - x0))


@contextlib.contextmanager
def _replaced_folder(path: Path) -> Iterator[Path]:
    """Yield a sibling scratch folder; on success it replaces `path` (file or folder), on error it goes."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        yield partial
        if os.path.lexists(path):
            old = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            os.rename(path, old)
            os.rename(partial, path)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.rename(partial, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


class _Bars(contextlib.AbstractContextManager):
    """One rich progress bar per scene (pixels done of pixels to do); a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), console=Console(stderr=True),
            )

    def __enter__(self) -> "_Bars":
        if self._progress is not None:
            self._progress.start()
        return self

    def add(self, description: str, total: int) -> Callable[[int], None]:
        if self._progress is None:
            return lambda pixels: None
        task = self._progress.add_task(description, total=total)
        return lambda pixels: self._progress.advance(task, pixels)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
