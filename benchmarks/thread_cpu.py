"""Where a run's CPU goes, thread by thread: one `segment` of an image (after a warm-up run), with the CPU
time of every thread of this process read from /proc (Linux only), and the time the engine spent inside
model calls. On a machine with as many cores as model threads, the other threads' CPU is taken from the
models.

    python benchmarks/thread_cpu.py /tmp/s8/scenes4096/images/scene_s9000_0.tif
    python benchmarks/thread_cpu.py IMAGE --mode patch

Threads that end before the run does (the per-run reader pool and label writer) are counted together as
"ended during the run" (the process's total CPU minus the threads still alive).

    python benchmarks/thread_cpu.py IMAGE --stand-in-models --repeats 3

`--stand-in-models`: the pipeline without its models. The segmenter and the refiner are replaced by
stand-ins that hand back, for each window, one of 16 class maps the real segmenter made of windows of this
image (computed once, before the runs), so everything around the models runs as in a real run (reads,
cutting Y, labels, the store), at no model cost: the time no model speed-up can remove. Its MagNet-Fast
chooses on the stand-in maps, so not the windows a real run refines. torch's second OpenMP thread still
spins between the main thread's operations, so on two cores this is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from magnet_cli.bench import VARIANTS, load_model, machine_description, segment_image
from magnet_cli.settings import InferenceSettings, ModelSettings


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by native thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended between listing and reading
            continue
        seconds[tid] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--mode", default="magnet", choices=sorted(VARIANTS))
    parser.add_argument("--stand-in-models", action="store_true", help="replace the models by stand-ins (see above)")
    parser.add_argument("--repeats", type=int, default=1, help="runs after the warm-up; the figures are their medians")
    args = parser.parse_args()
    import torch

    bundle = load_model(ModelSettings())
    settings = VARIANTS[args.mode].run_with(InferenceSettings(device="cpu"))
    if args.stand_in_models:
        stand_in_models(bundle, settings, args.image)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        segment_image(args.image, Path(scratch) / "warm.zarr", bundle, settings)
        for _ in range(max(1, args.repeats)):
            runs.append(measured_run(args.image, Path(scratch) / "run.zarr", bundle, settings))
    by_thread = {name: round(statistics.median(run[2].get(name, 0.0) for run in runs), 2) for name in runs[0][2]}
    print(json.dumps({
        "machine": machine_description(torch.device("cpu")), "image": args.image.name, "mode": args.mode,
        "stand_in_models": args.stand_in_models, "repeats": len(runs),
        "wall_s": round(statistics.median(run[0] for run in runs), 2),
        "model_calls_s": round(statistics.median(run[1]["segmenter_seconds"] + run[1]["refiner_seconds"] for run in runs), 2),
        "process_cpu_s": round(statistics.median(sum(run[2].values()) for run in runs), 2),
        "cpu_s_by_thread": dict(sorted(by_thread.items(), key=lambda item: -item[1])),
        "wall_s_each": [round(run[0], 2) for run in runs],
    }, indent=2))


def measured_run(image: Path, output: Path, bundle, settings: InferenceSettings) -> tuple[float, dict, Counter]:
    """One run: its wall seconds, its result and the CPU seconds of each thread (by name) it took."""
    before, process_before = thread_cpu_seconds(), process_cpu_seconds()
    start = time.perf_counter()
    result = segment_image(image, output, bundle, settings)
    seconds = time.perf_counter() - start
    after, process_after = thread_cpu_seconds(), process_cpu_seconds()
    names = {str(t.native_id): t.name for t in threading.enumerate()}
    names[str(os.getpid())] = "main"
    by_thread: Counter[str] = Counter()
    for tid, cpu in after.items():
        by_thread[names.get(tid, "other (torch's OpenMP workers)")] += cpu - before.get(tid, 0.0)
    by_thread["ended during the run (readers, label writer)"] = (process_after - process_before) - sum(by_thread.values())
    return seconds, result, by_thread


def stand_in_models(bundle, settings: InferenceSettings, image: Path) -> None:
    """Replace the engine's model calls (this process only) by stand-ins returning real class maps: the
    segmenter's own, made once of 16 windows spread over `image` at full resolution."""
    import torch

    from magnet_cli.io.base import Box
    from magnet_cli.io.open import open_image
    from magnet_cli.pipeline import Engine, RunStats

    engine = Engine(bundle, settings)
    h, w = engine.input_size
    with open_image(image) as source:
        ys = [round(i * (source.height - h) / 3) for i in range(4)]
        xs = [round(i * (source.width - w) / 3) for i in range(4)]
        windows = torch.stack([source.read(Box(y, x, y + h, x + w), h, w, engine.normalization) for y in ys for x in xs])
    maps = engine.segment_windows(windows, RunStats()).float().contiguous()
    served = [0]

    def next_maps(count: int) -> torch.Tensor:
        index = [(served[0] + i) % len(maps) for i in range(count)]
        served[0] += count
        return maps[index]

    Engine.segment_windows = lambda self, images, stats: next_maps(images.shape[0])  # type: ignore[method-assign]
    Engine.propose_refinement = lambda self, coarse, fine, stats: next_maps(coarse.shape[0])  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
