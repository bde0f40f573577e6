"""How much a better MagNet-Fast chooser could win: the finest level's windows refined by an oracle (the
ones whose refinement gains the most correct pixels, known from the truth) against the windows with the
highest mean uncertainty of Y (Fast's signal) and against other signals read from Y, at the same counts,
with the coarse levels in full (Fast's default, --fast-levels 1). Default model, synthetic scenes.

    python benchmarks/fast_oracle.py                       # 2 held-out scenes of 4096^2
    python benchmarks/fast_oracle.py --seed 5000           # the validation scenes (choose signals here)
    python benchmarks/fast_oracle.py --size 2048 --scenes 4

One MagNet run per scene records, for each finest window, the labels of Y (its parent's map cut to the
window: what Fast keeps for a window it does not refine) and of the refined map; a finest window's
output depends only on its own choice, so the mIoU of any choice is assembled from the two without
running again. Time is not measured: every window costs about the same, so a choice's cost is its count
(plus the coarse levels' windows, all refined).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import tifffile
import torch

from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.io.open import open_image
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine, _box_in_parent, _parent_maps
from magnet_cli.refine import class_labels, crop_resize, uncertainty
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth

HELD_OUT_SEED = 9000  # the benchmark's held-out seeds, not used in training
SHARES = (0.05, 0.1, 0.125, 0.2, 0.3, 0.4)


class RecordingEngine(Engine):
    """MagNet that keeps each finest window's Y labels, refined labels and the signals of SIGNALS on Y."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.finest: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray, dict[str, float]]] = {}

    def _process(self, plan, level, tasks, stats):
        refined = super()._process(plan, level, tasks, stats)
        if level == plan.depth - 1:
            h, w = self.input_size
            boxes = torch.tensor([_box_in_parent(t.window, t.parent, h, w) for t in tasks], dtype=torch.float64)
            coarse = crop_resize(_parent_maps(tasks), boxes, (h, w))
            for task, y, r in zip(tasks, coarse, refined):
                key = tuple(int(round(v)) for v in (task.window.y0, task.window.x0, task.window.y1, task.window.x1))
                labels = class_labels(y)
                self.finest[key] = (labels.numpy(), class_labels(r).numpy(), signals(y, labels, self.bundle.classes))
        return refined


def signals(y: torch.Tensor, labels: torch.Tensor, classes: list) -> dict[str, float]:
    """Window scores read from Y (C, h, w) alone, as a chooser could before running the window. "thin":
    the probability of the synthetic scenes' thin classes (road, building), whose IoU refinement lifts most."""
    u = uncertainty(y[None])[0, 0]
    names = [c.name for c in classes]
    thin = sum((y[names.index(name)] for name in ("road", "building") if name in names), torch.zeros_like(u))
    edges = (labels[1:] != labels[:-1]).float().mean() + (labels[:, 1:] != labels[:, :-1]).float().mean()
    return {
        "mean u (Fast)": float(u.mean()),
        "90th percentile of u": float(torch.quantile(u.flatten()[::16], 0.9)),
        "mean u^2": float((u * u).mean()),
        "mean u x thin": float((u * thin).mean()),
        "mean thin": float(thin.mean()),
        "label edges of Y": float(edges),
    }


def assembled_miou(scenes: list, classes: int, refine: set[tuple[int, tuple]]) -> float:
    """mIoU of `scenes` [(truth, {window box: (Y labels, refined labels, ...)})] with the finest windows
    in `refine` ((scene index, box)) refined and the others left to Y."""
    matrix = torch.zeros(classes, classes, dtype=torch.int64)
    for index, (truth, windows) in enumerate(scenes):
        labels = np.zeros_like(truth)
        for (y0, x0, y1, x1), (coarse, refined, _) in windows.items():
            labels[y0:y1, x0:x1] = refined if (index, (y0, x0, y1, x1)) in refine else coarse
        matrix += confusion(torch.from_numpy(labels), torch.from_numpy(truth), classes, 255)
    return 100 * mean_iou(matrix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first synth seed (5000: validation)")
    args = parser.parse_args()
    bundle = load_bundle(default_model_dir())
    classes = len(bundle.classes)
    engine = RecordingEngine(bundle, InferenceSettings(device="cpu", mode="magnet"))
    scenes = []  # (truth, {window: (Y labels, refined labels, mean u)})
    with tempfile.TemporaryDirectory() as folder:
        for image, mask in synth(folder, size=args.size, seed=args.seed, count=args.scenes, run=RunSettings(progress=False)):
            engine.finest = {}
            with open_image(image) as source:
                engine.run(source, lambda region, probabilities: None)
            scenes.append((tifffile.imread(mask).astype(np.int64), engine.finest))

    def miou(refine: set[tuple[int, tuple]]) -> float:
        return assembled_miou(scenes, classes, refine)

    rows = []  # (gain in correct pixels, signals, (scene, window))
    for index, (truth, windows) in enumerate(scenes):
        for (y0, x0, y1, x1), (coarse, refined, scores) in windows.items():
            part = truth[y0:y1, x0:x1]
            rows.append((int((refined == part).sum()) - int((coarse == part).sum()), scores, (index, (y0, x0, y1, x1))))
    by_gain = [key for *_, key in sorted(rows, key=lambda r: -r[0])]
    names = list(rows[0][1])
    by_signal = {name: [key for *_, key in sorted(rows, key=lambda r: -r[1][name])] for name in names}
    finest_per_scene = len(rows) / len(scenes)
    coarse_windows = sum(4**level for level in range(engine.plan(args.size, args.size).depth - 1))
    total = coarse_windows + finest_per_scene
    print(f"{args.scenes} scenes (synth seed {args.seed}+), {args.size}^2, default model; "
          f"{coarse_windows:.0f} coarse + {finest_per_scene:.0f} finest windows per scene.")
    print(f"No finest window refined: {miou(set()):.2f} mIoU; all (MagNet): {miou(set(by_gain)):.2f}. "
          f"Windows refinement made worse: {sum(1 for r in rows if r[0] < 0)} of {len(rows)}.")
    print("| finest windows refined / scene | windows / MagNet's | oracle | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for share in SHARES:
        count = round(share * len(rows))
        cells = " | ".join(f"{miou(set(by_signal[name][:count])):.2f}" for name in names)
        print(f"| {count / len(scenes):.0f} ({100 * share:.1f}%) | {(coarse_windows + count / len(scenes)) / total:.2f} | "
              f"{miou(set(by_gain[:count])):.2f} | {cells} |")
    gains = np.array([r[0] for r in rows])
    rank = lambda values: np.argsort(np.argsort(values))  # noqa: E731
    correlations = {name: round(float(np.corrcoef(rank(gains), rank(np.array([r[1][name] for r in rows])))[0, 1]), 3) for name in names}
    print("Rank correlation of a window's gain with each signal:", json.dumps(correlations))

if __name__ == "__main__":
    main()
