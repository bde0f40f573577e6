"""MagNet-Fast with a learned box-mean score in place of the mean uncertainty of Y, the streamed cutoff
machinery of `fast.py` unchanged: a study for the next step of issue 15 item 3, not a feature.

    python benchmarks/fast_box_mean_score.py                         # validation scenes (seeds 5000+)
    python benchmarks/fast_box_mean_score.py --seed 9000 --settings 0.1,0.25

The score is `fast_chooser_study.py`'s "box means": a ridge regression, fitted on training scenes
(seeds 1000+, MagNet runs recorded in fp32), from the window means of u, u^2, each class's probability
p_c and u * p_c to a finest window's first-order mIoU gain from refinement. Being linear in window means,
it is the window mean of one per-pixel score, so Fast's summed-area tables and box means take it as they
take u; shifted by its lower bound (every input lies in [0, 1]) it is >= 0, as the probes' ratio
correction of the streamed cutoff needs. Here it replaces `fast._uncertainty_table` for the score runs
(this process only); each variant's mIoU over the scenes, seconds per scene and windows refined per
level and scene are printed.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import tifffile
import torch

from fast_chooser_study import FeatureEngine, TRAIN_SEED, box_mean_inputs, record, ridge_fit, rows  # this folder's scripts
from fast_tradeoff import run
from magnet_cli import fast
from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine
from magnet_cli.refine import uncertainty
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth


def fit_pixel_score(x: np.ndarray, gain: np.ndarray, classes: int, ridge: float) -> tuple[np.ndarray, float]:
    """The ridge on standardised box-mean inputs, rewritten per pixel: weights of (u, u^2, p_c, u * p_c)
    and a constant, shifted so that the score is >= 0 for any inputs in [0, 1]."""
    mean, scale, fitted = ridge_fit(x, gain, box_mean_inputs(classes), ridge)
    weights = fitted[:-1] / scale
    constant = fitted[-1] - float((fitted[:-1] * mean / scale).sum())
    lower_bound = constant + float(np.minimum(weights, 0).sum())
    return weights, constant - lower_bound


def score_table(weights: np.ndarray, constant: float, classes: int):
    """A replacement for `fast._uncertainty_table`: the summed-area table of the per-pixel score."""

    def table(window_map: torch.Tensor) -> np.ndarray:
        p = window_map.float()
        u = uncertainty(p[None])[0, 0]
        inputs = [u, u * u, *(p[c] for c in range(classes)), *(u * p[c] for c in range(classes))]
        score = sum(float(w) * value for w, value in zip(weights, inputs)) + constant
        return fast._summed_area(score.numpy())

    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=5000, help="first scene to score (5000: validation, 9000: held out)")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--train", type=int, default=6, help="training scenes to fit on")
    parser.add_argument("--settings", default="0.1,0.25", help="--fast-patches values")
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    bundle = load_bundle(default_model_dir())
    classes = len(bundle.classes)
    recorder = FeatureEngine(bundle, InferenceSettings(device="cpu", mode="magnet", precision="fp32"))
    train = record(recorder, TRAIN_SEED, args.train, args.size)
    truth_pixels = sum(np.bincount(truth[truth < classes].ravel(), minlength=classes) for truth, _ in train)
    x, gain, _, _ = rows(train, classes, truth_pixels)
    weights, constant = fit_pixel_score(x, gain, classes, 1.0)
    names = ["u", "u^2", *(f"p_{c.name}" for c in bundle.classes), *(f"u*p_{c.name}" for c in bundle.classes)]
    largest = float(np.abs(weights).max())
    print("per-pixel score (largest weight 1): " + ", ".join(f"{n} {w / largest:.3f}" for n, w in zip(names, weights))
          + f"; constant {constant / largest:.3f}")
    variants = [("magnet", {"mode": "magnet"}, False)]
    for setting in args.settings.split(","):
        options = {"mode": "fast", "fast_patches": float(setting)}
        variants += [(f"fast {setting}, mean u", options, False), (f"fast {setting}, box-mean score", options, True)]
    engines = {name: (Engine(bundle, InferenceSettings(device="cpu", precision="fp32", **options)), scored)
               for name, options, scored in variants}
    plain, scored_table = fast._uncertainty_table, score_table(weights, constant, classes)
    matrices = {name: torch.zeros(classes, classes, dtype=torch.int64) for name in engines}
    seconds = {name: 0.0 for name in engines}
    refined: dict[str, list] = {name: [] for name in engines}
    with tempfile.TemporaryDirectory() as folder:
        for image, mask in synth(folder, size=args.size, seed=args.seed, count=args.scenes, run=RunSettings(progress=False)):
            truth = torch.from_numpy(tifffile.imread(mask).astype(np.int64))
            for name, (engine, scored) in engines.items():
                fast._uncertainty_table = scored_table if scored else plain
                try:
                    labels, took, _ = run(engine, image, args.size)
                finally:
                    fast._uncertainty_table = plain
                matrices[name] += confusion(torch.from_numpy(labels), truth, classes, 255)
                seconds[name] += took
                refined[name].append(engine._fast.counts() if engine._fast is not None else "all")
    print(f"\n{args.scenes} scenes from seed {args.seed}, {args.size}^2, fp32, fitted on {args.train} training scenes")
    print("| variant | mIoU | s / scene | windows refined per level, each scene |")
    print("|---|---|---|---|")
    for name in engines:
        print(f"| {name} | {100 * mean_iou(matrices[name]):.2f} | {seconds[name] / args.scenes:.2f} | {refined[name]} |")


if __name__ == "__main__":
    main()
