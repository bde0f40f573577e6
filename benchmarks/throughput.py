"""How close the pipeline gets to pure model compute: end-to-end time vs model-only time on the same
windows (DESIGN section 3; issue 2's "pipeline overhead under 25% on CPU").

End to end = `magnet_cli.segmentation` on a real file (reading, scheduling, refinement bookkeeping, the
label writer). Model only = the same number of segmenter and refiner calls, same batch sizes, on
tensors already in memory. Each repeat runs one of each back to back; the overhead is the median over
the repeats of end_to_end / model_only - 1 (the share of model time the pipeline adds; issue 15 asks
for under 10%), also given as 1 - model_only / end_to_end (its share of the run). `magnet benchmark`
reports the same measurement as its "limit"; this script runs only that part, on any image.

    python benchmarks/throughput.py /tmp/magnet-bench/scene_8192.tif --repeats 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from magnet_cli.bench import LIMIT_REPEATS, machine_description, measure_limit
from magnet_cli.devices import resolve_device
from magnet_cli.settings import InferenceSettings, ModelSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=LIMIT_REPEATS, help="interleaved pairs of runs (medians reported)")
    args = parser.parse_args()
    inference = InferenceSettings(batch_size=args.batch_size, device=args.device)
    with tempfile.TemporaryDirectory() as scratch:
        report = measure_limit(args.image, ModelSettings(model=args.model), inference, Path(scratch), args.repeats)
    print(json.dumps({"machine": machine_description(resolve_device(args.device)), **report}, indent=2))


if __name__ == "__main__":
    main()
