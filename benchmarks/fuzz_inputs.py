"""Fuzz the readers with a seeded corpus of hostile inputs and print what became of each case.

Each case (tests/io/fuzz_corpus.py: byte flips, truncations and header edits of a small tiled TIFF;
crafted Zarr and OME-Zarr metadata) is opened and fully read by `open_image` in a child process under a
time limit and a memory cap. Every case must end as a clean error (InputError, one line) or a completed
read; tracebacks, hangs and memory blow-ups are defects, listed after the table.

    python benchmarks/fuzz_inputs.py --cases 500 --seed 10 --workdir /tmp/magnet-fuzz
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.io.fuzz_corpus from this checkout

from tests.io.fuzz_corpus import RESULTS, build_case, corpus, run_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="magnet-fuzz-"))
    cases = corpus(args.seed, args.cases)
    start = time.perf_counter()

    paths = [build_case(case, workdir / f"{index:04d}") for index, case in enumerate(cases)]
    outcomes = [(case.name, *result) for case, result in zip(cases, run_cases(paths))]
    counts = collections.Counter(result for _, result, _ in outcomes)
    print(f"seed {args.seed}, {len(cases)} cases, {time.perf_counter() - start:.0f} s\n")
    print("| outcome | cases |\n|---|---|")
    print(f"| cases tried | {len(cases)} |")
    for result in RESULTS:
        print(f"| {result} | {counts.get(result, 0)} |")
    bad = [(name, result, line) for name, result, line in outcomes if result not in ("clean error", "read completed")]
    for name, result, line in bad:
        print(f"{result}: {name}: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
