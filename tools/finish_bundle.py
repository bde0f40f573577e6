"""Finish a trained bundle for shipping: name, description, inference defaults, the commands that made
it and its held-out scores from a `magnet benchmark` report, all written into its model.toml.

    python tools/finish_bundle.py weights/default --name magnet-synth-default \
        --benchmark benchmarks/results/heldout/benchmark.json --script weights/train_default.sh \
        --points 0.5 --smooth-kernel 11 --training-seconds 3300
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from magnet_cli.toml_writer import dumps


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

    path = args.bundle / "model.toml"
    document = tomllib.loads(path.read_text())
    report = json.loads(args.benchmark.read_text())
    document["name"] = args.name
    if args.description:
        document["description"] = args.description
    document["points"] = args.points
    document["smooth_kernel"] = args.smooth_kernel
    training = document.setdefault("training", {})
    training["commands"] = commands_of(args.script)
    training["script"] = str(args.script)
    training["total_seconds"] = args.training_seconds
    training["trained"] = True
    document["evaluation"] = {
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
    path.write_text(dumps(document))
    print(f"updated {path}")


if __name__ == "__main__":
    main()
