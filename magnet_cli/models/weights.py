"""Weight files read as data: `torch.load(weights_only=True)` admits tensors and plain containers but no
pickled code, so a downloaded model cannot run anything by being read. Every reader of a weights file
(segmenter, refiner) comes through here; problems are one ModelError naming the file. `first_non_finite`
is the one check that weights hold numbers (a resumed checkpoint, a trained model before export)."""

from __future__ import annotations

import hashlib
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


def first_non_finite(state: Any, prefix: str = "") -> str | None:
    """The name of the first floating tensor holding NaN or inf in a (nested) state dict; None if none."""
    if isinstance(state, torch.Tensor):
        return prefix if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A segmenter state dict, read as data only (no pickled code runs)."""
    state = read_weights_file(path, "segmenter weights file")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state dict of tensors")
    return state


def load_state(module: torch.nn.Module, path: Path) -> None:
    """Load the segmenter weights in `path` into `module`; a mismatch is one ModelError naming the file."""
    try:
        module.load_state_dict(read_state(path))
    except ModelError:
        raise
    except Exception as error:
        raise ModelError(f"{path}: cannot load segmenter weights ({str(error).splitlines()[0]})") from None


def segmenter_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (sorted names, dtype, shape, bytes): the same for a built-in net,
    its TorchScript export and a factory module holding the same weights, on any device."""
    return state_digest(module.state_dict())


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """`segmenter_digest` of a state dict (as read from a weights file, without building the module)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
