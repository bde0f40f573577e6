"""MagNet's --points on the validation scenes: mIoU and seconds of the default bundle at several
fractions of each window's points taken from the refiner (1.0: everywhere, no point selection).

    python benchmarks/points_sweep.py                                    # seeds 5000-5001, 4096^2
    python benchmarks/points_sweep.py --points 0.5,0.75,0.9,1.0 --seed 5000 --scenes 2

The default bundle's points were chosen with this on the validation seeds (5000-5001), never on the
held-out ones (9000-9003). Timings are noisy on shared machines: compare them inside one run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import torch

from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_tradeoff import run  # noqa: E402  (one engine run into labels, timed)

VALIDATION_SEED = 5000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="0.5,0.75,0.9,1.0")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    bundle = load_bundle(default_model_dir())
    classes = len(bundle.classes)
    settings = [float(p) for p in args.points.split(",")]
    engines = {p: Engine(bundle, InferenceSettings(device="cpu", mode="magnet", points=p)) for p in settings}
    print(f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
          f"{args.scenes} scenes (synth seed {args.seed}+), {args.size}^2, default model, MagNet.")
    print("| points | mIoU | mIoU per scene | s / image |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        pairs = synth(folder, size=args.size, seed=args.seed, count=args.scenes, run=RunSettings(progress=False))
        truths = [torch.from_numpy(tifffile.imread(mask).astype(np.int64)) for _, mask in pairs]
        run(engines[settings[0]], pairs[0][0], args.size)  # warm-up: primitive caches
        for points, engine in engines.items():
            total, seconds, scenes = torch.zeros(classes, classes, dtype=torch.int64), 0.0, []
            for (image, _), truth in zip(pairs, truths):
                labels, took, _ = run(engine, image, args.size)
                matrix = confusion(torch.from_numpy(labels), truth, classes, 255)
                total += matrix
                seconds += took
                scenes.append(f"{100 * mean_iou(matrix):.2f}")
            print(f"| {points:g} | {100 * mean_iou(total):.2f} | {', '.join(scenes)} | {seconds / args.scenes:.2f} |", flush=True)


if __name__ == "__main__":
    main()
