"""Fixtures of the training tests: a tiny synth dataset folder and a tiny segmenter bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.bundle import save_bundle
from magnet_cli.settings import RunSettings
from magnet_cli.synthetic import SYNTH_CLASSES, synth

INPUT = 32  # model input; 128 px scenes then have 3 levels (32, 64, 128)
SCENE = 128
OPTIONS = {"widths": (8, 16)}


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dataset")
    synth(directory, size=SCENE, count=2, format="png", run=RunSettings(progress=False))
    return directory


@pytest.fixture(scope="session")
def segmenter_bundle(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("segmenter")
    torch.manual_seed(0)
    module = SmallUNet(len(SYNTH_CLASSES), widths=(8, 16)).eval()
    save_bundle(directory, "tiny", SYNTH_CLASSES, module, "small_unet", (INPUT, INPUT), None,
                architecture_options={"widths": [8, 16]})
    return directory


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run several times faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
