"""Weight files read as data: `torch.load(weights_only=True)` admits tensors and plain containers but no
pickled code, so a downloaded model cannot run anything by being read. Every reader of a weights file
(segmenter, refiner) comes through here; problems are one ModelError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from magnet_cli.errors import ModelError


def read_weights_file(path: Path, what: str) -> dict[str, Any]:
    """The dict stored in `path` (`what` names the file in errors: "segmenter weights file")."""
    if not path.is_file():
        raise ModelError(f"{path}: no such {what}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or tampered file
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(payload).__name__}")
    return payload
