"""What the engine's per-batch steps cost, each next to the way it was done before: the coarse map Y
cut for four sibling windows (the 2x upsampling written out vs grid_sample, and the parent map shared vs
stacked) and for four windows of different parents (a batch where blank siblings were pruned: each box cut
from its own parent vs the parents stacked first; until session 11 every stacked parent was also padded
whole), a batch's windows copied straight into channels_last vs stacked then converted, the default
segmenter with its BatchNorms folded vs as trained, and the refiner's calls with their input joined in
channels_last once and the softmax written into the batch vs converted, joined and stacked, and the
labels of four windows' maps (the writer thread's argmax) with torch's max(0) vs `host_class_labels`, and
the refiner's upsampling of its class scores as autocast hands them (bf16, channels_last) vs in fp32
planar layout (`upsample_class_map`).

    python benchmarks/step_costs.py               # 256 px windows, the default bundle
    python benchmarks/step_costs.py --rounds 30

On one thread, in CPU seconds of this process (robust to other jobs on a shared machine), the best of
`--rounds` interleaved rounds per step. A batch is four windows, as the engine forms on CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import Callable

import torch

from magnet_cli.bench import machine_description
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.models.upsample import upsample_class_map
from magnet_cli.pipeline import Engine, RunStats
from magnet_cli.settings import InferenceSettings
from magnet_cli.refine import _grid_sample_boxes, class_labels, crop_resize, host_class_labels

BATCH = 4


def best_cpu_ms(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The fastest of `rounds` CPU times of each step, in milliseconds, rounds interleaved."""
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.process_time()
            step()
            best[name] = min(best[name], (time.process_time() - start) * 1000)
    return {name: round(ms, 2) for name, ms in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(default_model_dir())
    h, w = bundle.input_size
    generator = torch.Generator().manual_seed(0)
    parent = torch.rand(1, bundle.num_classes, h, w, generator=generator).softmax(1)
    parents = [torch.rand(bundle.num_classes, h, w, generator=generator).softmax(0) for _ in range(BATCH)]
    quadrants = torch.tensor(
        [[y, x, y + h // 2, x + w // 2] for y in (0, h // 2) for x in (0, w // 2)], dtype=torch.float64
    )
    segmenter = bundle.segmenter.to("cpu", channels_last=True)
    folded = segmenter.for_inference()
    images = torch.rand(BATCH, segmenter.input_channels, h, w, generator=generator).contiguous(memory_format=torch.channels_last)

    engine = Engine(bundle, InferenceSettings(device="cpu", mode="magnet"))
    refiner = engine.refiner
    coarse = torch.rand(BATCH, bundle.num_classes, h, w, generator=generator).softmax(1)
    fine = torch.rand(BATCH, bundle.num_classes, h, w, generator=generator).softmax(1)

    windows = [torch.rand(segmenter.input_channels, h, w, generator=generator) for _ in range(BATCH)]
    # The refiner's half-resolution class scores, one window per call, as bf16 autocast leaves them.
    half_scores = [torch.rand(1, bundle.num_classes, h // 2, w // 2, generator=generator).bfloat16().contiguous(
        memory_format=torch.channels_last) for _ in range(BATCH)]
    tasks = [SimpleNamespace(image=SimpleNamespace(result=lambda window=window: window)) for window in windows]

    def refiner_before() -> torch.Tensor:  # the engine's refiner calls up to session 9
        parts = []
        for i in range(BATCH):
            pair = (t[i : i + 1].contiguous(memory_format=torch.channels_last) for t in (coarse, fine))
            parts.append(torch.softmax(refiner(*pair).float(), dim=1).contiguous())
        return torch.cat(parts)

    with torch.inference_mode():
        steps = {
            "coarse crop, grid_sample, stacked parents (before)": lambda: _grid_sample_boxes(
                torch.cat([parent] * BATCH), quadrants, (h, w)),
            "coarse crop, 2x upsampling, shared parent (now)": lambda: crop_resize(
                parent.expand(BATCH, -1, -1, -1), quadrants, (h, w)),
            "coarse crop, 4 parents stacked first (the copy now saved), then cut": lambda: crop_resize(torch.stack(parents), quadrants, (h, w)),
            "coarse crop, 4 parents, each box cut from its own (now)": lambda: crop_resize(parents, quadrants, (h, w)),
            "gather windows: stack, then channels_last (before)": lambda: torch.stack(windows).contiguous(
                memory_format=torch.channels_last),
            "gather windows: straight into channels_last (now)": lambda: engine._gather(tasks, RunStats()),
            "segmenter as trained (before)": lambda: segmenter.probabilities(images),
            "segmenter, BatchNorms folded (now)": lambda: folded.probabilities(images),
            "refiner calls, inputs converted and joined, outputs stacked (before)": refiner_before,
            "refiner calls, input joined in channels_last, softmax into the batch (now)": lambda: engine.propose_refinement(
                coarse, fine, RunStats()),
            "window labels: torch max(0).indices (before)": lambda: [class_labels(m).numpy() for m in coarse],
            "window labels: host_class_labels (now)": lambda: [host_class_labels(m.numpy()) for m in coarse],
            "refiner's score upsampling, bf16 channels_last (before)": lambda: [torch.nn.functional.interpolate(
                scores, size=(h, w), mode="bilinear", align_corners=False) for scores in half_scores],
            "refiner's score upsampling, fp32 planar (now)": lambda: [upsample_class_map(scores, [h, w]) for scores in half_scores],
        }
        for step in steps.values():  # warm-up: oneDNN primitive caches
            step()
        costs = best_cpu_ms(steps, args.rounds)
    print(json.dumps({"machine": machine_description(torch.device("cpu")), "threads": 1, "batch": BATCH,
                      "window": [h, w], "classes": bundle.num_classes, "rounds": args.rounds,
                      "best_cpu_ms_per_batch": costs}, indent=2))


if __name__ == "__main__":
    main()
