"""How closely labels agree when the arithmetic differs: another kernel library, another batch size.

    python benchmarks/agreement.py --size 2048 --seed 900

Bit-identical results hold for one device type and one set of kernels (README "Determinism"). Other
CPUs and GPUs run other kernels, which round differently. With no other hardware here, this script
measures two stand-ins on the same image with the default model:
- convolutions through ATen's own kernels instead of oneDNN (`torch.backends.mkldnn`), as another CPU
  would pick other kernels;
- a batch size of 1 instead of 4, which changes the kernels' blocking;
- 1 intra-op thread instead of torch's default (2 here), which units and workers may differ in.
It prints, for each, the share of labels that match the default run and the largest probability
difference of the finest-level output.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from magnet_cli.io.open import open_image
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine
from magnet_cli.segmentation import resolve_model
from magnet_cli.settings import InferenceSettings, ModelSettings
from magnet_cli.synthetic import synth


@contextlib.contextmanager
def intra_op_threads(count: int):  # noqa: ANN201
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def probabilities(image: Path, settings: InferenceSettings, kernels: contextlib.AbstractContextManager) -> np.ndarray:
    engine = Engine(resolve_model(ModelSettings(model=default_model_dir())), settings)
    with open_image(image) as source, kernels:
        out = np.zeros((engine.bundle.num_classes, source.height, source.width), np.float32)

        def sink(region, p):  # noqa: ANN001
            y0, x0, y1, x1 = region
            out[:, y0:y1, x0:x1] = p.numpy()

        engine.run(source, sink)
    return out


def main() -> None:
    warnings.filterwarnings("ignore", message="TF32 acceleration")  # torch notes Intel GPUs when oneDNN is toggled
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ((image, _),) = synth(Path(folder), size=args.size, seed=args.seed, count=1)
        base = probabilities(image, InferenceSettings(device="cpu"), contextlib.nullcontext())
        cases = {
            "ATen convolutions instead of oneDNN": (InferenceSettings(device="cpu"), torch.backends.mkldnn.flags(enabled=False)),
            "batch size 1 instead of 4": (InferenceSettings(device="cpu", batch_size=1), contextlib.nullcontext()),
            "1 intra-op thread instead of the default": (InferenceSettings(device="cpu"), intra_op_threads(1)),
        }
        labels = base.argmax(0)
        print(f"| {args.size}^2 scene, seed {args.seed}, default model, magnet | labels equal | pixels that differ | max probability difference |")
        print("|---|---|---|---|")
        for name, (settings, kernels) in cases.items():
            other = probabilities(image, settings, kernels)
            differ = int((other.argmax(0) != labels).sum())
            print(f"| {name} | {100 * (1 - differ / labels.size):.4f}% | {differ} of {labels.size} | "
                  f"{np.abs(other - base).max():.2e} |", flush=True)


if __name__ == "__main__":
    main()
