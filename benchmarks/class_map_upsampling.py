"""The default models alone (segmenter + refiner on a batch of 4 windows, as the engine calls them), with
their class-score upsampling as it was before session 12 (PyTorch's bilinear kernel on the scores as
the network leaves them: bf16 channels_last under bf16 autocast) and as it is now
(`models.upsample.upsample_class_map`: fp32, planar layout), and the share of the models' time that
upsampling takes either way.

    python benchmarks/class_map_upsampling.py                 # bf16 and fp32, 2 threads
    python benchmarks/class_map_upsampling.py --threads 1 --rounds 12

CPU seconds of this process per 10 batches, the median of `--rounds` interleaved rounds per variant.
On a CPU without native bf16, bf16 is emulated and much slower; the ratio still shows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import magnet_cli.models.builtin as builtin
import magnet_cli.models.refiner as refiner
from magnet_cli.bench import machine_description
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine, RunStats
from magnet_cli.settings import InferenceSettings

BATCH, CALLS = 4, 10
NOW = builtin.upsample_class_map


def before(scores: torch.Tensor, size: list[int]) -> torch.Tensor:  # the networks' code until session 12
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def measure(precision: str, rounds: int) -> dict:
    bundle = load_bundle(default_model_dir())
    engine = Engine(bundle, InferenceSettings(device="cpu", mode="magnet", precision=precision))
    h, w = bundle.input_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
    coarse = torch.rand(BATCH, bundle.num_classes, h, w, generator=generator).softmax(1)
    upsampling = {"before": 0.0, "now": 0.0}
    totals: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(rounds):
        for name, function in (("before", before), ("now", NOW)):
            def timed(scores: torch.Tensor, size: list[int], name: str = name, function=function) -> torch.Tensor:
                start = time.process_time()
                out = function(scores, size)
                upsampling[name] += time.process_time() - start
                return out
            builtin.upsample_class_map = refiner.upsample_class_map = timed
            start = time.process_time()
            for _ in range(CALLS):
                engine.propose_refinement(coarse, engine.segment_windows(images, RunStats()), RunStats())
            totals[name].append(time.process_time() - start)
    builtin.upsample_class_map = refiner.upsample_class_map = NOW
    return {
        "precision": engine.precision,
        "cpu_s_per_10_batches": {name: round(statistics.median(values), 3) for name, values in totals.items()},
        "now_over_before": round(statistics.median(totals["now"]) / statistics.median(totals["before"]), 3),
        "upsampling_share_of_model_cpu": {name: round(upsampling[name] / sum(totals[name]), 3) for name in totals},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": machine_description(torch.device("cpu")), "threads": args.threads, "batch": BATCH,
                      "results": [measure(p, args.rounds) for p in ("bf16", "fp32")]}, indent=2))


if __name__ == "__main__":
    main()
