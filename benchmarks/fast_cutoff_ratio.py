"""How much surer a window's own Y is than the map streaming MagNet-Fast ranks it on: for each level, the
percentiles of the windows' scores (mean uncertainty over the window's box) on their parent's refined map
(their own Y) against those on their grandparent's map, from MagNet runs of the default model.

    python benchmarks/fast_cutoff_ratio.py                 # the 2 validation scenes of 4096^2
    python benchmarks/fast_cutoff_ratio.py --seed 9000     # the held-out ones

A level ranked on its grandparents' maps (the finest of a 4096^2 scene) is cut at a score read from them,
then each window is judged on its own Y: the ratio is why that cutoff needs the correction `fast.py` makes,
and why the ratio measured one level up cannot stand in for it.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from magnet_cli.fast import _box_mean, _uncertainty_table
from magnet_cli.io.open import open_image
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth

PERCENTILES = (0.9, 0.75, 0.5)


class MapKeepingEngine(Engine):
    """MagNet that keeps the uncertainty table of every window's refined map."""

    def _process(self, plan, level, tasks, stats):
        maps = super()._process(plan, level, tasks, stats)
        for task, window_map in zip(tasks, maps):
            self.tables[task.window.key] = _uncertainty_table(window_map)
        return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=5000, help="first synth seed (5000: validation, 9000: held out)")
    args = parser.parse_args()
    engine = MapKeepingEngine(load_bundle(default_model_dir()), InferenceSettings(device="cpu", mode="magnet"))
    print(f"{args.scenes} scenes (synth seed {args.seed}+), {args.size}^2, default model. Percentiles "
          f"{', '.join(f'{100 * q:.0f}th' for q in PERCENTILES)} of the windows' scores.")
    print("| scene | level | own Y | grandparent's map | own / grandparent |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for image, _ in synth(folder, size=args.size, seed=args.seed, count=args.scenes, run=RunSettings(progress=False)):
            engine.tables = {}
            with open_image(image) as source:
                engine.run(source, lambda region, probabilities: None)
                plan = engine.plan(source.height, source.width)
            for level in range(2, plan.depth):
                own, grand = [], []
                for window in plan.windows(level):
                    parent = plan.parent(window)
                    grandparent = plan.parent(parent)
                    own.append(_box_mean(engine.tables[parent.key], parent, window))
                    grand.append(_box_mean(engine.tables[grandparent.key], grandparent, window))
                own_q, grand_q = np.quantile(own, PERCENTILES), np.quantile(grand, PERCENTILES)
                cells = [", ".join(f"{v:.3f}" for v in values) for values in (own_q, grand_q, own_q / grand_q)]
                print(f"| {image.name} | {level} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
