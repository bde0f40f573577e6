"""Precision against precision: the default model on one held-out synthetic scene, each --precision in
turn, same engine, same windows. Prints seconds (total, segmenter, refiner), the share of labels that
agree with fp32, and mIoU against the scene's truth.

    python benchmarks/precision.py                       # CPU: fp32 and bf16, 1024^2, MagNet
    python benchmarks/precision.py --device cuda --size 4096 --precisions fp32,bf16,fp16

Timings are noisy on shared machines: compare the ratios inside one run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.io.open import open_image
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth

HELD_OUT_SEED = 9000  # the benchmark's held-out seeds, not used in training


def labels_of(engine: Engine, image: Path, size: int) -> tuple[np.ndarray, dict]:
    out = np.zeros((size, size), dtype=np.int64)

    def sink(region, probabilities):
        y0, x0, y1, x1 = region
        out[y0:y1, x0:x1] = probabilities.argmax(0).cpu().numpy()

    start = time.perf_counter()
    with open_image(image) as source:
        stats = engine.run(source, sink)
    return out, {"seconds": time.perf_counter() - start, "segmenter": stats.segmenter_seconds,
                 "refiner": stats.refiner_seconds, "precision": stats.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--mode", default="magnet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    import torch

    bundle = load_bundle(default_model_dir())
    with tempfile.TemporaryDirectory() as folder:
        image, mask = synth(folder, size=args.size, seed=HELD_OUT_SEED, count=1, run=RunSettings(progress=False))[0]
        truth = torch.from_numpy(tifffile.imread(mask).astype(np.int64))
        print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
              f"{torch.__version__}, device {args.device}. Scene: synth seed {HELD_OUT_SEED}, {args.size}^2, --mode {args.mode}.")
        print("| precision | s | segmenter s | refiner s | labels equal to fp32 | mIoU |")
        print("|---|---|---|---|---|---|")
        reference = None
        for precision in args.precisions.split(","):
            engine = Engine(bundle, InferenceSettings(mode=args.mode, device=args.device, precision=precision))
            labels_of(engine, image, args.size)  # warm-up: primitive caches
            labels, times = labels_of(engine, image, args.size)
            reference = labels if reference is None else reference
            same = float((labels == reference).mean())
            miou = mean_iou(confusion(torch.from_numpy(labels), truth, len(bundle.classes), 255))
            print(f"| {times['precision']} | {times['seconds']:.2f} | {times['segmenter']:.2f} | {times['refiner']:.2f} | "
                  f"{100 * same:.3f}% | {100 * miou:.2f} |")


if __name__ == "__main__":
    main()
