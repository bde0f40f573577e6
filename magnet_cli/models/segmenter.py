"""Segmenter adapters: any backbone becomes `Segmenter`, float RGB in [0, 1] -> class logits."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from magnet_cli.errors import ModelError


@dataclass
class Segmenter:
    """A backbone plus its input contract: (N, 3, h, w) floats in [0, 1] -> logits (N, C, h, w)."""

    module: nn.Module
    num_classes: int
    input_size: tuple[int, int]  # (h, w)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def to(self, device: torch.device) -> "Segmenter":
        self.module = self.module.to(device).eval()
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
            images = (images - mean) / std
        logits = self.module(images)
        if isinstance(logits, (tuple, list)):  # some backbones return (main, auxiliary)
            logits = logits[0]
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise ModelError(
                f"segmenter returned shape {tuple(logits.shape)}; expected (N, {self.num_classes}, h, w)"
            )
        return logits


def load_torchscript(path: Path | str) -> nn.Module:
    """A TorchScript segmenter file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such segmenter file")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # TorchScript raises RuntimeError and friends for foreign files
        raise ModelError(f"{path}: not a TorchScript model ({type(error).__name__})") from None


def load_factory(spec: str, num_classes: int, *, trust_model: bool = False, named_by: str | None = None) -> nn.Module:
    """A user model given as 'package.module:factory'; the factory takes num_classes.

    Importing a module and calling a function run arbitrary Python (`os:_exit` ends the process), and a
    model is data a user may have downloaded: so this runs only with `trust_model` (--trust-model).
    `named_by` is the model.toml that names the factory, for the error; None: --segmenter named it.
    """
    if not trust_model:
        where = f"{named_by}: segmenter.factory {spec!r}" if named_by is not None else f"--segmenter {spec}"
        raise ModelError(f"{where} is Python code that magnet-cli would import and run; give --trust-model if you trust it")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"segmenter factory {spec!r} must look like 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"cannot import segmenter factory {spec!r}: {error}") from None
    try:
        module = factory(num_classes)
    except Exception as error:  # the user's code failing is the user's to fix: one line, not a traceback
        raise ModelError(f"segmenter factory {spec!r} failed: {type(error).__name__}: {error}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"segmenter factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def infer_num_classes(module: nn.Module, input_size: tuple[int, int]) -> int:
    """Run one blank image through a model to learn its class count."""
    with torch.no_grad():
        out = module(torch.zeros(1, 3, *input_size))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ModelError("segmenter must return logits shaped (N, C, h, w)")
    return int(out.shape[1])
