"""Write the stand-in default bundle: a SmallUNet segmenter and a refiner with RANDOM-INIT weights.

It exists so that `magnet segment` runs end to end before the trained default bundle lands (issue 3).
Its masks are meaningless. Usage: python tools/make_random_bundle.py weights/default --seed 0
"""

from __future__ import annotations

import argparse

import torch

from magnet_cli.classes import ClassInfo
from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.bundle import save_bundle
from magnet_cli.models.refiner import Refiner

CLASSES = [
    ClassInfo("background", (0, 0, 0)),
    ClassInfo("class_1", (230, 159, 0)),
    ClassInfo("class_2", (86, 180, 233)),
    ClassInfo("class_3", (0, 158, 115)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    segmenter = SmallUNet(len(CLASSES)).eval()
    refiner = Refiner(len(CLASSES), "coarse_fine").eval()
    save_bundle(
        args.directory,
        "random-init-placeholder",
        CLASSES,
        segmenter,
        "small_unet",
        (args.input_size, args.input_size),
        refiner,
        points=0.5,
        smooth_kernel=5,
        extra={
            "description": "RANDOM-INIT PLACEHOLDER: untrained weights; masks are meaningless until issue 3 lands.",
            "training": {
                "commands": [f"python tools/make_random_bundle.py {args.directory} --seed {args.seed}"],
                "trained": False,
            },
        },
    )


if __name__ == "__main__":
    main()
