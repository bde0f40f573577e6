"""Finish a trained bundle for shipping: name, description, inference defaults, the commands that made
it and its held-out scores from a `magnet benchmark` report, all written into its model.toml.

    python tools/finish_bundle.py weights/default --name magnet-synth-default \
        --benchmark benchmarks/results/heldout/benchmark.json --script weights/train_default.sh \
        --points 0.5 --smooth-kernel 11 --training-seconds 3300
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from magnet_cli.models.bundle import BundleSpec


def commands_of(script: Path) -> list[str]:
    """The `magnet ...` commands of a shell script, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines() if line.strip().startswith("magnet ")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", default="")
    parser.add_argument("--benchmark", type=Path, required=True, help="benchmark.json of the held-out run")
    parser.add_argument("--script", type=Path, required=True, help="the shell script of training commands")
    parser.add_argument("--points", type=float, required=True)
    parser.add_argument("--smooth-kernel", type=int, required=True)
    parser.add_argument("--training-seconds", type=float, required=True, help="wall time of the whole script")
    args = parser.parse_args()

    spec = BundleSpec.read(args.bundle)
    report = json.loads(args.benchmark.read_text())
    training = {
        **spec.training,
        "commands": commands_of(args.script),
        "script": str(args.script),
        "total_seconds": args.training_seconds,
        "trained": True,
    }
    evaluation = {
        "data": report["data"],
        "machine": report["machine"],
        "note": "held-out synth scenes (seeds never used in training or validation); mIoU in [0, 1]",
        "miou": {row["mode"]: row["miou"] for row in report["modes"]},
        "boundary_f": {row["mode"]: row["boundary_f"] for row in report["modes"] if row["boundary_f"] is not None},
        "seconds_per_image": {row["mode"]: row["seconds_per_image"] for row in report["modes"]},
        "per_class_iou": {
            mode: {r["class"]: r["iou"] for r in rows if r["iou"] is not None} for mode, rows in report["per_class"].items()
        },
    }
    spec = replace(
        spec, name=args.name, description=args.description or spec.description, points=args.points,
        smooth_kernel=args.smooth_kernel, training=training, evaluation=evaluation,
    )
    # Read back through the spec's checks: a value the bundle cannot hold fails here, not in `segment`.
    BundleSpec.from_document(spec.to_document(), args.bundle / "model.toml")
    print(f"updated {spec.write(args.bundle)}")


if __name__ == "__main__":
    main()
