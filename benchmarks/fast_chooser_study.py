"""Could a learned score choose MagNet-Fast's finest windows better than the mean uncertainty of Y?

A study, not a feature: a ridge regression from what the engine knows about a finest window before
running it (its Y, the parent's refined map over its box, and the parent's own pixels over it, read at the
parent's resolution) to the window's gain from refinement, fitted on training scenes and scored on
validation and held-out scenes against Fast's mean uncertainty and against an oracle, at equal counts of
finest windows refined, the coarse levels in full (Fast's default). Default model, synthetic scenes.

    python benchmarks/fast_chooser_study.py                    # fit on 6 training scenes of 4096^2
    python benchmarks/fast_chooser_study.py --train 12 --size 4096

Besides the 21-input score ("learned"), two restricted scores that Fast's streamed cutoff could carry as
it is (summed-area tables of one per-pixel map, box means, the probes' ratio): "box means" (the same ridge
on the window means of u, u^2, each class's probability p_c and u * p_c: the mean over the window of one
per-pixel linear score) and "class weights" (non-negative weights on the means of u * p_c, no intercept:
a per-class weighted uncertainty, >= 0 as the ratio correction needs).

The gain a window is fitted to is what it adds to mIoU, to first order: for each class, the correct
pixels it gains over the class's truth pixels in the training scenes. A finest window's output depends
only on its own choice, so each choice's mIoU is assembled from one MagNet run per scene
(`fast_oracle.py` does the same for the oracle and single signals).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from magnet_cli.io.open import open_image
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine, _box_in_parent, _parent_maps
from magnet_cli.refine import class_labels, crop_resize, uncertainty
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth

from fast_oracle import assembled_miou  # this folder's script: run as python benchmarks/...

TRAIN_SEED, VALIDATION_SEED, HELD_OUT_SEED = 1000, 5000, 9000  # weights/train_default.sh's, then the benchmark's
SHARES = (0.05, 0.1, 0.2, 0.25)  # of the finest windows refined (0.25: the default --fast-patches)


class FeatureEngine(Engine):
    """MagNet that keeps, per finest window: Y's labels, the refined labels and the features of `features`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.windows: dict = {}
        self.parent_pixels: dict = {}

    def _process(self, plan, level, tasks, stats):
        refined = super()._process(plan, level, tasks, stats)
        if level == plan.depth - 2:  # the finest windows' parents: keep their pixels (at their resolution)
            for task in tasks:
                self.parent_pixels[task.window.key] = task.image.result().float()
        if level == plan.depth - 1:
            h, w = self.input_size
            boxes = torch.tensor([_box_in_parent(t.window, t.parent, h, w) for t in tasks], dtype=torch.float64)
            coarse = crop_resize(_parent_maps(tasks), boxes, (h, w))
            for task, box, y, r in zip(tasks, boxes.tolist(), coarse, refined):
                y0, x0, y1, x1 = (int(round(v)) for v in box)
                pixels = self.parent_pixels[task.parent.key][:, y0:y1, x0:x1]
                window = task.window
                key = tuple(int(round(v)) for v in (window.y0, window.x0, window.y1, window.x1))
                self.windows[key] = (class_labels(y).numpy(), class_labels(r).numpy(), features(y, pixels))
        return refined


def features(y: torch.Tensor, pixels: torch.Tensor) -> np.ndarray:
    """What is known before a finest window runs: Y (C, h, w) and the parent's pixels over it (3, h/2, w/2)."""
    u = uncertainty(y[None])[0, 0]
    labels = class_labels(y)
    edges = (labels[1:] != labels[:-1]).float().mean() + (labels[:, 1:] != labels[:, :-1]).float().mean()
    gray = pixels.mean(0)
    gy, gx = gray[1:, :-1] - gray[:-1, :-1], gray[:-1, 1:] - gray[:-1, :-1]
    smooth = F.interpolate(F.avg_pool2d(gray[None, None], 2), scale_factor=2, mode="nearest")[0, 0]
    return np.array([
        float(u.mean()), float((u * u).mean()), float(torch.quantile(u.flatten()[::16], 0.9)), float(edges),
        *(float(y[c].mean()) for c in range(y.shape[0])), *(float((u * y[c]).mean()) for c in range(y.shape[0])),
        *(float(pixels[b].std()) for b in range(pixels.shape[0])),
        float(torch.sqrt(gy * gy + gx * gx).mean()),  # edges in the pixels
        float((gray - smooth).abs().mean()),  # detail finer than 2 parent pixels: what the finest level adds
    ])


def record(engine: FeatureEngine, seed: int, count: int, size: int) -> list:
    """[(truth, {window: (Y labels, refined labels, features)})] for `count` scenes from `seed`."""
    scenes = []
    with tempfile.TemporaryDirectory() as folder:
        for image, mask in synth(folder, size=size, seed=seed, count=count, run=RunSettings(progress=False)):
            engine.windows, engine.parent_pixels = {}, {}
            with open_image(image) as source:
                engine.run(source, lambda region, probabilities: None)
            scenes.append((tifffile.imread(mask).astype(np.int64), engine.windows))
            print(f"recorded {image.name}", flush=True)
    return scenes


def rows(scenes: list, classes: int, truth_pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Features, first-order mIoU gains, correct-pixel gains and keys of every finest window."""
    x, gain, pixels, keys = [], [], [], []
    for index, (truth, windows) in enumerate(scenes):
        for box, (coarse, refined, values) in windows.items():
            y0, x0, y1, x1 = box
            part = truth[y0:y1, x0:x1]
            before = np.bincount(part[coarse == part], minlength=256)[:classes]
            after = np.bincount(part[refined == part], minlength=256)[:classes]
            x.append(values)
            gain.append(float(((after - before) / np.maximum(truth_pixels, 1)).sum()))
            pixels.append(int(after.sum() - before.sum()))
            keys.append((index, box))
    return np.array(x), np.array(gain), np.array(pixels), keys


def box_mean_inputs(classes: int) -> list[int]:
    """Columns of `features` that are window means of per-pixel values: u, u^2, p_c, u * p_c."""
    return [0, 1, *range(4, 4 + 2 * classes)]


def class_inputs(classes: int) -> list[int]:
    """Columns of `features` holding the window means of u * p_c."""
    return list(range(4 + classes, 4 + 2 * classes))


def ridge_fit(x: np.ndarray, gain: np.ndarray, columns: list[int], ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ridge regression on standardised `columns` of x with an intercept: (mean, scale, weights), the
    intercept last."""
    mean, scale = x[:, columns].mean(0), x[:, columns].std(0) + 1e-9
    design = np.c_[(x[:, columns] - mean) / scale, np.ones(len(x))]
    return mean, scale, np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), design.T @ gain)


def ridge_score(x: np.ndarray, gain: np.ndarray, columns: list[int], ridge: float):
    """`ridge_fit`'s score function."""
    mean, scale, weights = ridge_fit(x, gain, columns, ridge)
    return lambda values: np.c_[(values[:, columns] - mean) / scale, np.ones(len(values))] @ weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--train", type=int, default=6, help="training scenes to fit on")
    parser.add_argument("--test", type=int, default=2, help="validation and held-out scenes each")
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--precision", default="fp32", help="of the MagNet runs recorded (fp32: as in session 11's study)")
    args = parser.parse_args()
    bundle = load_bundle(default_model_dir())
    classes = len(bundle.classes)
    engine = FeatureEngine(bundle, InferenceSettings(device="cpu", mode="magnet", precision=args.precision))
    train = record(engine, TRAIN_SEED, args.train, args.size)
    truth_pixels = sum(np.bincount(truth[truth < classes].ravel(), minlength=classes) for truth, _ in train)
    x, gain, _, _ = rows(train, classes, truth_pixels)
    learned = ridge_score(x, gain, list(range(x.shape[1])), args.ridge)
    box_means = ridge_score(x, gain, box_mean_inputs(classes), args.ridge)
    weights, _ = nnls(x[:, class_inputs(classes)], gain)
    class_weighted = lambda values: values[:, class_inputs(classes)] @ weights

    print(f"Fitted on {args.train} training scenes (seeds {TRAIN_SEED}+), {len(x)} windows, {args.size}^2.")
    print("class weights (of u * p_c, largest 1): " + ", ".join(
        f"{name} {w / max(weights.max(), 1e-12):.3f}" for name, w in zip((c.name for c in bundle.classes), weights)))
    for name, seed in (("validation", VALIDATION_SEED), ("held out", HELD_OUT_SEED)):
        scenes = record(engine, seed, args.test, args.size)
        values, gains, _, keys = rows(scenes, classes, truth_pixels)
        orders = {"oracle": np.argsort(-gains), "mean u (Fast)": np.argsort(-values[:, 0]), "learned": np.argsort(-learned(values)),
                  "box means": np.argsort(-box_means(values)), "class weights": np.argsort(-class_weighted(values))}
        rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
        corr = np.corrcoef(rank(gains), rank(learned(values)))[0, 1], np.corrcoef(rank(gains), rank(values[:, 0]))[0, 1]
        print(f"\n{name} (seeds {seed}+, {args.test} scenes): none refined {assembled_miou(scenes, classes, set()):.2f}, "
              f"all (MagNet) {assembled_miou(scenes, classes, set(keys)):.2f}; rank correlation with the gain: "
              f"learned {corr[0]:.3f}, mean u {corr[1]:.3f}")
        print("| finest windows / scene | " + " | ".join(orders) + " |")
        print("|---" * (1 + len(orders)) + "|")
        for share in SHARES:
            n = round(share * len(keys))
            cells = " | ".join(f"{assembled_miou(scenes, classes, {keys[i] for i in order[:n]}):.2f}" for order in orders.values())
            print(f"| {n / len(scenes):.0f} ({100 * share:.0f}%) | {cells} |")


if __name__ == "__main__":
    main()
