"""Peak memory and time of `segment` on generated tiled pyramidal TIFFs of growing size.

Each size runs in its own child process (`magnet_cli.bench.run_segment`) so its peak RSS is its own. The TIFFs are written tile by
tile (never whole in memory) with a cheap procedural pattern.

    python benchmarks/memory_scaling.py --sizes 8192 16384 32768 --workdir /tmp/magnet-bench
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from magnet_cli.bench import run_segment
from magnet_cli.errors import MagnetError
from magnet_cli.settings import InferenceSettings, ModelSettings

TILE = 512


def pattern_tile(y0: int, x0: int, size: int, level: int) -> np.ndarray:
    """A deterministic textured tile: stripes and blobs at several scales, plus noise."""
    scale = 2**level
    yy, xx = np.mgrid[y0 : y0 + size, x0 : x0 + size].astype(np.float32) * scale
    base = 0.5 + 0.25 * np.sin(xx / 700.0) * np.cos(yy / 900.0) + 0.15 * np.sin((xx + yy) / 37.0)
    rng = np.random.default_rng(y0 * 1_000_003 + x0 + level)
    noise = rng.normal(0, 0.05, size=(size, size)).astype(np.float32)
    rgb = np.stack([base + noise, base * 0.8 + noise, 1.0 - base + noise], axis=-1)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def tiles(height: int, width: int, level: int):
    for y in range(0, height, TILE):
        for x in range(0, width, TILE):
            tile = np.zeros((TILE, TILE, 3), np.uint8)
            part = pattern_tile(y, x, TILE, level)
            tile[:] = part
            yield tile


def write_pyramidal_tiff(path: Path, size: int, min_level: int = 1024) -> None:
    levels = []
    s = size
    while s >= min_level:
        levels.append(s)
        s //= 2
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles(size, size, 0), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE),
                  subifds=len(levels) - 1, photometric="rgb", compression="zlib", compressionargs={"level": 1})
        for k, s in enumerate(levels[1:], start=1):
            tif.write(tiles(s, s, k), shape=(s, s, 3), dtype=np.uint8, tile=(TILE, TILE), subfiletype=1,
                      photometric="rgb", compression="zlib", compressionargs={"level": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/magnet-bench"))
    parser.add_argument("--mode", default="magnet")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        image = args.workdir / f"scene_{size}.tif"
        if not image.exists():
            start = time.perf_counter()
            write_pyramidal_tiff(image, size)
            print(f"wrote {image} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        inference = InferenceSettings(mode=args.mode, batch_size=args.batch_size, device=args.device)
        try:
            result = run_segment(image, args.workdir / f"scene_{size}.zarr", ModelSettings(model=args.model), inference, args.mode)
        except MagnetError as error:
            sys.exit(str(error))
        row = {
            "size": size,
            "megapixels": size * size / 1e6,
            "seconds": round(result["wall_seconds"], 1),
            "peak_rss_mb": round(result["peak_rss_mb"], 1),
            "windows": result["windows"],
            "segmenter_s": result["segmenter_seconds"],
            "refiner_s": result["refiner_seconds"],
            "read_wait_s": result["read_wait_seconds"],
        }
        row["us_per_pixel"] = round(row["seconds"] / (size * size) * 1e6, 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}"
    report = {"machine": machine, "mode": args.mode, "batch_size": args.batch_size, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print("| size | megapixels | windows | seconds | us/pixel | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}^2 | {r['megapixels']:.0f} | {r['windows']} | {r['seconds']} | {r['us_per_pixel']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
