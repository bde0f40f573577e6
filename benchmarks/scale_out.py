"""Wall time and peak memory of one image and of a folder, in one process, in shards and on Dask workers.

    python benchmarks/scale_out.py --workdir /tmp/scale --size 8192 --folder-size 2048 --folder-count 8

Renders the scenes with `magnet synth` (deterministic), runs `magnet segment` with the default model in
each configuration, checks that every configuration's labels are bit-identical to the single process's,
and prints a Markdown table: wall seconds, the ratio to one process, the model time the runs report,
and the peak RSS of the largest process in the run's process tree (sampled every 0.2 s with psutil).
Timings are noisy on a shared machine: compare the ratios within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import zarr

MAGNET = [sys.executable, "-m", "magnet_cli.cli"]


def run(commands: list[list[str]]) -> tuple[float, float, list[dict]]:
    """Run commands at the same time; wall seconds, the largest process's peak RSS (MB), their JSON.
    Concurrent commands share the cores (OMP_NUM_THREADS), as shards on one node should."""
    start = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // len(commands))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if len(commands) > 1 else None
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in commands]
    peak: dict[int, int] = {}
    while any(p.poll() is None for p in processes):
        for p in processes:
            try:
                tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                try:
                    peak[process.pid] = max(peak.get(process.pid, 0), process.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
        time.sleep(0.2)
    wall = time.perf_counter() - start
    records = []
    for p in processes:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(p.args)}\n{stderr}")
        records.extend(json.loads(stdout))
    return wall, max(peak.values(), default=0) / 2**20, records


def labels(path: Path) -> list[np.ndarray]:
    stores = sorted(path.glob("*.zarr")) if not path.name.endswith(".zarr") else [path]
    return [zarr.open_group(str(s), mode="r")["0"][...] for s in stores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--folder-size", type=int, default=2048)
    parser.add_argument("--folder-count", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["image", "folder"], help="run one of the two inputs")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    big, folder = work / "big", work / "folder"
    if not big.exists():
        subprocess.run([*MAGNET, "synth", str(big), "--size", str(args.size), "--seed", "500", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    if not folder.exists():
        subprocess.run([*MAGNET, "synth", str(folder), "--size", str(args.folder_size), "--seed", "600",
                        "--count", str(args.folder_count), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    cases = [
        (f"one {args.size}^2 image", next((big / "images").iterdir())),
        (f"{args.folder_count} images of {args.folder_size}^2", folder / "images"),
    ]
    if args.only:
        cases = [cases[0] if args.only == "image" else cases[1]]
    n = args.workers
    print("| input | how | wall s | speed-up vs 1 process | model s (summed) | peak RSS of one process, MB | labels |")
    print("|---|---|---|---|---|---|---|")
    for title, source in cases:
        out = work / "out"
        baseline = None
        reference = None
        configurations = [
            ("1 process", lambda o: [[*MAGNET, "segment", str(source), "-o", str(o), "--json", "--no-progress"]]),
            (f"{n} shards, concurrent", lambda o: [
                [*MAGNET, "segment", str(source), "-o", str(o), "--json", "--no-progress", "--shard", f"{i}/{n}"] for i in range(n)
            ]),
            ("--cluster local:1", lambda o: [[*MAGNET, "segment", str(source), "-o", str(o), "--json", "--no-progress", "--cluster", "local:1"]]),
            (f"--cluster local:{n}", lambda o: [[*MAGNET, "segment", str(source), "-o", str(o), "--json", "--no-progress", "--cluster", f"local:{n}"]]),
        ]
        for how, commands in configurations:
            shutil.rmtree(out, ignore_errors=True)
            target = out if source.is_dir() else out.with_suffix(".zarr")
            shutil.rmtree(target, ignore_errors=True)
            wall, rss, records = run(commands(target))
            model = sum(r["segmenter_seconds"] + r["refiner_seconds"] for r in records)
            found = labels(target)
            if reference is None:
                reference, baseline = found, wall
            same = len(found) == len(reference) and all(np.array_equal(a, b) for a, b in zip(found, reference))
            print(f"| {title} | {how} | {wall:.1f} | {baseline / wall:.2f}x | {model:.1f} | {rss:.0f} | "
                  f"{'identical' if same else 'DIFFERENT'} |", flush=True)
            shutil.rmtree(target, ignore_errors=True)


if __name__ == "__main__":
    main()
