"""Write examples/example.tif: a 1536 x 2048 tiled pyramidal TIFF (SubIFDs) of photographic textures.

A stand-in scene until `magnet synth` (issue 3) renders the benchmark scenes. Deterministic.
Usage: python examples/make_example.py examples/example.tif
"""

from __future__ import annotations

import sys

import numpy as np
import tifffile
from skimage import data, transform


def texture(name: str, height: int, width: int) -> np.ndarray:
    tile = getattr(data, name)()
    tile = np.stack([tile] * 3, axis=-1) if tile.ndim == 2 else tile[..., :3]
    reps = (height // tile.shape[0] + 1, width // tile.shape[1] + 1, 1)
    return np.tile(tile, reps)[:height, :width]


def scene(height: int = 1536, width: int = 2048) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = texture("grass", height, width).astype(np.float32)
    brick = texture("brick", height, width).astype(np.float32) * np.array([1.0, 0.75, 0.6])
    gravel = texture("gravel", height, width).astype(np.float32)
    blob = (yy - height * 0.4) ** 2 / (height * 0.25) ** 2 + (xx - width * 0.35) ** 2 / (width * 0.2) ** 2 < 1
    image[blob] = brick[blob]
    road = np.abs((yy - 0.3 * xx) - height * 0.55) < 4  # a thin structure a downsampled view loses
    image[road] = gravel[road] * 0.6 + 90
    return np.clip(image, 0, 255).astype(np.uint8)


def write_pyramid(path: str, image: np.ndarray, levels: int = 3, tile: int = 256) -> None:
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(tile, tile), subifds=levels - 1, photometric="rgb", compression="jpeg")
        for level in range(1, levels):
            factor = 2**level
            small = transform.downscale_local_mean(image, (factor, factor, 1)).astype(np.uint8)
            tif.write(small, tile=(tile, tile), subfiletype=1, photometric="rgb", compression="jpeg")


if __name__ == "__main__":
    write_pyramid(sys.argv[1] if len(sys.argv) > 1 else "examples/example.tif", scene())
