"""MagNet-Fast's trade-off: seconds and mIoU of streaming Fast at several --fast-patches settings against
MagNet and patch processing, default model, held-out synthetic scenes, one process.

    python benchmarks/fast_tradeoff.py                      # 2 scenes of 2048^2
    python benchmarks/fast_tradeoff.py --size 4096 --scenes 4 --settings 3,0.1,0.25,0.5
    python benchmarks/fast_tradeoff.py --size 4096 --settings 0.2,0.4,0.6,0.5@all   # FAST_PATCHES[@FAST_LEVELS]
    python benchmarks/fast_tradeoff.py --seed 5000          # the validation scenes (choose defaults there)

Timings are noisy on shared machines: compare the ratios inside one run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import tifffile
import torch

from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.io.open import open_image
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine
from magnet_cli.refine import class_labels
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth

HELD_OUT_SEED = 9000  # the benchmark's held-out seeds, not used in training


def run(engine: Engine, image, size: int) -> tuple[np.ndarray, float, int]:
    out = np.zeros((size, size), dtype=np.int64)

    def sink(region, probabilities):
        y0, x0, y1, x1 = region
        out[y0:y1, x0:x1] = class_labels(probabilities).numpy()  # argmax(0) would cost ~3 s per 4096^2 image

    start = time.perf_counter()
    with open_image(image) as source:
        engine.run(source, sink)
    refined = engine._fast.counts() if engine._fast is not None else None
    return out, time.perf_counter() - start, sum(refined) if refined else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first synth seed (5000: validation)")
    parser.add_argument("--settings", default="3,0.1,0.25,0.5", help="--fast-patches values, each optionally @FAST_LEVELS")
    args = parser.parse_args()
    bundle = load_bundle(default_model_dir())
    variants = [("patch", dict(mode="patch")), ("magnet", dict(mode="magnet"))]
    for setting in args.settings.split(","):
        patches, _, levels = setting.partition("@")  # --fast-levels: the default unless given
        options = dict(mode="fast", fast_patches=float(patches), **({"fast_levels": levels} if levels else {}))
        variants.append((f"fast {setting}", options))
    engines = {name: Engine(bundle, InferenceSettings(device="cpu", **options)) for name, options in variants}
    with tempfile.TemporaryDirectory() as folder:
        pairs = synth(folder, size=args.size, seed=args.seed, count=args.scenes, run=RunSettings(progress=False))
        classes = len(bundle.classes)
        matrices = {name: torch.zeros(classes, classes, dtype=torch.int64) for name in engines}
        seconds = {name: 0.0 for name in engines}
        refined = {name: 0 for name in engines}
        run(engines["patch"], pairs[0][0], args.size)  # warm-up: primitive caches
        for image, mask in pairs:
            truth = torch.from_numpy(tifffile.imread(mask).astype(np.int64))
            for name, engine in engines.items():
                labels, took, windows = run(engine, image, args.size)
                matrices[name] += confusion(torch.from_numpy(labels), truth, classes, 255)
                seconds[name] += took
                refined[name] += windows
    print(f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
          f"{args.scenes} scenes (synth seed {args.seed}+), {args.size}^2, default model.")
    print("| variant | mIoU | s / image | x MagNet's time | windows refined / image |")
    print("|---|---|---|---|---|")
    for name in engines:
        windows = "-" if refined[name] < 0 else f"{refined[name] / args.scenes:.0f}"
        print(f"| {name} | {100 * mean_iou(matrices[name]):.2f} | {seconds[name] / args.scenes:.2f} | "
              f"{seconds[name] / seconds['magnet']:.2f} | {windows} |")


if __name__ == "__main__":
    main()
