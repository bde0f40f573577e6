"""How close the pipeline gets to pure model compute: end-to-end time vs model-only time on the same
windows (DESIGN section 3; issue 2's "pipeline overhead under 25% on CPU").

End to end = `magnet_cli.segment` on a real file (reading, scheduling, refinement bookkeeping, the
label writer). Model only = the same number of segmenter and refiner calls, same batch sizes, on
tensors already in memory. Overhead = 1 - model_only / end_to_end.

    python benchmarks/throughput.py /tmp/magnet-bench/scene_8192.tif --repeat 1
"""

from __future__ import annotations

import argparse
import json
import platform
import os
import time
from pathlib import Path

import torch

from magnet_cli.pipeline import Engine, InferenceSettings, RunStats
from magnet_cli.segment import resolve_model, segment


def model_only_seconds(engine: Engine, windows_per_level: list[int], batch_size: int, refine: bool) -> float:
    """Time the segmenter (and refiner below the root level) on in-memory tensors, batch by batch."""
    h, w = engine.input_size
    c = engine.bundle.num_classes
    stats = RunStats()
    images = torch.rand(batch_size, 3, h, w)
    maps = torch.rand(batch_size, c, h, w).softmax(1)
    start = time.perf_counter()
    for level, count in enumerate(windows_per_level):
        for first in range(0, count, batch_size):
            n = min(batch_size, count - first)
            fine = engine.segment_windows(images[:n], stats)
            if refine and level > 0:
                engine.propose_refinement(maps[:n], fine, stats)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--model", default=None)
    parser.add_argument("--mode", default="magnet")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("/tmp/magnet-throughput.zarr"))
    args = parser.parse_args()
    bundle = resolve_model(args.model)
    settings = InferenceSettings(mode=args.mode, batch_size=args.batch_size, device="cpu")
    engine = Engine(bundle, settings)
    model_only_seconds(engine, [2], args.batch_size, True)  # warm-up (oneDNN primitive caches)
    start = time.perf_counter()
    (result,) = segment([args.image], args.output, bundle=bundle, mode=args.mode, batch_size=args.batch_size,
                        device="cpu", overwrite=True, progress=False)
    end_to_end = time.perf_counter() - start
    pure = model_only_seconds(engine, result.windows_per_level, args.batch_size, args.mode in ("magnet", "fast"))
    segmenter_only = model_only_seconds(engine, result.windows_per_level, args.batch_size, False)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "image": str(args.image),
        "size": [result.height, result.width],
        "mode": args.mode,
        "windows": result.windows,
        "end_to_end_s": round(end_to_end, 2),
        "model_only_s": round(pure, 2),
        "segmenter_only_s": round(segmenter_only, 2),
        "in_run_model_calls_s": round(result.segmenter_seconds + result.refiner_seconds, 2),
        "overhead_fraction": round(1 - pure / end_to_end, 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
