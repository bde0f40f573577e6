"""Blank regions skipped (`--background auto`) against none on a slide-like scene: tissue islands (cut
from a held-out synthetic scene) on noisy glass, about 75% of the area blank. Same model, same engine
settings; prints seconds, windows, the blank share written as no data, and whether the labels on tissue
are identical.

    python benchmarks/background_speed.py                 # 2048^2, MagNet, CPU
    python benchmarks/background_speed.py --size 4096 --mode fast

Timings are noisy on shared machines: compare the ratio inside one run. (`magnet synth` gains its own
slide-like option; this script builds its scene itself so it runs without it.)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

from magnet_cli.segmentation import segment
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import SceneSpec, render_region

HELD_OUT_SEED = 9000
GLASS = 236  # grey level of empty glass, with +-3 of sensor noise


def slide_like(size: int, seed: int = HELD_OUT_SEED) -> tuple[np.ndarray, float]:
    """The scene's pixels inside four round islands, glass elsewhere; and the blank share."""
    scene, _ = render_region(SceneSpec(seed, size, size), 0, 0, size, size)
    rng = np.random.default_rng(seed)
    image = (GLASS + rng.integers(-3, 4, size=scene.shape)).astype(np.uint8)
    ys, xs = np.mgrid[0:size, 0:size]
    tissue = np.zeros((size, size), bool)
    for cy, cx in ((0.3, 0.3), (0.3, 0.72), (0.72, 0.35), (0.7, 0.74)):
        tissue |= (ys - cy * size) ** 2 + (xs - cx * size) ** 2 < (0.141 * size) ** 2  # 4 x 6.25% of the area
    image[tissue] = scene[tissue]
    return image, 1.0 - float(tissue.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--mode", default="magnet")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    image, blank_share = slide_like(args.size)
    print(f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"slide-like scene {args.size}^2, glass {100 * blank_share:.1f}% of the area, --mode {args.mode}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "slide.tif"
        tifffile.imwrite(path, image, photometric="rgb", tile=(256, 256))
        rows, labels = {}, {}
        for background in ("none", "auto", "none", "auto"):  # twice each: the first pair warms caches
            out = Path(folder) / f"{background}.zarr"
            (result,) = segment(
                [path], out, inference=InferenceSettings(mode=args.mode, device=args.device, background=background),
                run=RunSettings(progress=False, overwrite=True),
            )
            rows[background] = result
            labels[background] = np.asarray(zarr.open_group(str(out), mode="r")["0"][...])
        none, auto = rows["none"], rows["auto"]
        segmented = labels["auto"] != (auto.nodata if auto.nodata is not None else -1)
        same = np.array_equal(labels["auto"][segmented], labels["none"][segmented])
        print(f"{'background':<10} {'seconds':>8} {'windows':>8} {'no-data %':>10}")
        for name, row in rows.items():
            share = 100 * row.nodata_pixels / (row.height * row.width)
            print(f"{name:<10} {row.seconds:>8.2f} {row.windows:>8d} {share:>10.1f}")
        print(f"auto / none time: {auto.seconds / none.seconds:.2f}x; labels on tissue identical: {same}")


if __name__ == "__main__":
    main()
