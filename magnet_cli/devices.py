"""The one device resolver: `--device auto|cpu|cuda|cuda:N` to a torch device that exists here."""

from __future__ import annotations

import torch

from magnet_cli.errors import UsageError
from magnet_cli.settings import check_device


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` takes the first CUDA device when there is one; asking for a device that is not here is a
    user error, named before any work starts."""
    name = check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    return device
