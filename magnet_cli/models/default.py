"""Where the model bundle used without --model lives: $MAGNET_MODEL, else the bundle shipped in the package."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

MODEL_ENV = "MAGNET_MODEL"


def packaged_model_dir() -> Path:
    """The default bundle inside the installed package (magnet_cli/weights/default).

    Found relative to the package rather than the checkout, so a wheel install finds it; pip unpacks
    wheels, so the package is a real directory and its resources are plain files.
    """
    return Path(str(resources.files("magnet_cli").joinpath("weights", "default")))


def default_model_dir() -> Path:
    """The bundle `segment` and friends load when no --model is given: $MAGNET_MODEL if set, else the packaged one."""
    override = os.environ.get(MODEL_ENV, "")
    return Path(override) if override else packaged_model_dir()
