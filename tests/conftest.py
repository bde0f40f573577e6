"""Shared fixtures: tiny random-init models (fast on CPU) and generated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magnet_cli.classes import default_classes
from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.bundle import ModelBundle, save_bundle
from magnet_cli.models.refiner import Refiner
from magnet_cli.models.segmenter import Segmenter

NUM_CLASSES = 3


def tiny_bundle(input_size: int = 64, seed: int = 0, num_classes: int = NUM_CLASSES) -> ModelBundle:
    torch.manual_seed(seed)
    segmenter = SmallUNet(num_classes, widths=(8, 16)).eval()
    refiner = Refiner(num_classes).eval()
    return ModelBundle(
        "tiny", default_classes(num_classes), Segmenter(segmenter, num_classes, (input_size, input_size)), refiner,
        points=0.5, smooth_kernel=3,
    )


@pytest.fixture
def bundle() -> ModelBundle:
    return tiny_bundle()


@pytest.fixture
def bundle_dir(tmp_path_factory) -> "Path":  # noqa: F821
    directory = tmp_path_factory.mktemp("bundle")
    b = tiny_bundle()
    save_bundle(directory, "tiny", b.classes, b.segmenter.module, "small_unet", (64, 64), b.refiner,
                points=0.5, smooth_kernel=3, architecture_options={"widths": [8, 16]})
    return directory


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish random RGB image (blocks plus noise) so that models see structure."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)[:height, :width]
    noise = rng.integers(0, 32, size=image.shape, dtype=np.uint8)
    return (image // 2 + noise).astype(np.uint8)


def count_reads(source) -> list:  # noqa: ANN001
    """Make `source.read` record each box it is asked for; the returned list fills as reads happen."""
    reads: list = []
    original = source.read

    def counting_read(box, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        reads.append(box)
        return original(box, *args, **kwargs)

    source.read = counting_read
    return reads
