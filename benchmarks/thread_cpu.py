"""Where a run's CPU goes, thread by thread: one `segment` of an image (after a warm-up run), with the CPU
time of every thread of this process read from /proc (Linux only), and the time the engine spent inside
model calls. On a machine with as many cores as model threads, the other threads' CPU is taken from the
models.

    python benchmarks/thread_cpu.py /tmp/s8/scenes4096/images/scene_s9000_0.tif
    python benchmarks/thread_cpu.py IMAGE --mode patch

Threads that end before the run does (the per-run reader pool and label writer) are counted together as
"ended during the run" (the process's total CPU minus the threads still alive).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    args = parser.parse_args()
    import torch

    bundle = load_model(ModelSettings())
    settings = VARIANTS[args.mode].run_with(InferenceSettings(device="cpu"))
    with tempfile.TemporaryDirectory() as scratch:
        segment_image(args.image, Path(scratch) / "warm.zarr", bundle, settings)
        before, process_before = thread_cpu_seconds(), process_cpu_seconds()
        start = time.perf_counter()
        result = segment_image(args.image, Path(scratch) / "run.zarr", bundle, settings)
        seconds = time.perf_counter() - start
        after, process_after = thread_cpu_seconds(), process_cpu_seconds()
        names = {str(t.native_id): t.name for t in threading.enumerate()}
    names[str(os.getpid())] = "main"
    by_thread: Counter[str] = Counter()
    for tid, cpu in after.items():
        by_thread[names.get(tid, "other (torch's OpenMP workers)")] += cpu - before.get(tid, 0.0)
    by_thread["ended during the run (readers, label writer)"] = (process_after - process_before) - sum(by_thread.values())
    print(json.dumps({
        "machine": machine_description(torch.device("cpu")), "image": args.image.name, "mode": args.mode,
        "wall_s": round(seconds, 2), "model_calls_s": round(result["segmenter_seconds"] + result["refiner_seconds"], 2),
        "process_cpu_s": round(process_after - process_before, 2),
        "cpu_s_by_thread": {name: round(cpu, 2) for name, cpu in by_thread.most_common()},
    }, indent=2))


if __name__ == "__main__":
    main()
