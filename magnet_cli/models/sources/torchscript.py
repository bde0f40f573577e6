"""TorchScript files (`.ts`; `.pt`, `.pth`, `.jit` as torch.jit.save writes them), kept for existing users:
TorchScript is deprecated upstream (torch.export and ONNX are the ways forward). Loading one imports no
Python and runs no pickled code, so it needs no --trust-model (README, "Model files are data")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from magnet_cli.errors import ModelError
from magnet_cli.models.segmenter import Segmenter, module_channels

if TYPE_CHECKING:
    from magnet_cli.models.bundle import SegmenterSpec
    from magnet_cli.models.sources import Contract


def load(spec: "SegmenterSpec", directory: Path | None, contract: "Contract", *, named_by: str | None = None) -> Segmenter:
    path = (directory or Path()) / spec.torchscript  # type: ignore[operator]
    module = load_torchscript(path)
    return Segmenter(module, contract.num_classes or 0, (0, 0), path=path, input_channels=stated_channels(module, contract))


def stated_channels(module: nn.Module, contract: "Contract") -> int:
    """The input channels of a module whose file does not state them (TorchScript, a factory): the
    bundle's bands count, else its first convolution's, else 3."""
    return contract.channels or module_channels(module) or 3


def load_torchscript(path: Path | str) -> nn.Module:
    """A TorchScript module, in eval mode on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such segmenter file")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # TorchScript raises RuntimeError and friends for foreign files
        raise ModelError(f"{path}: not a TorchScript model ({type(error).__name__})") from None


def save(segmenter: Segmenter, directory: Path, spec: "SegmenterSpec") -> None:
    script(segmenter.module.cpu().eval()).save(str(directory / spec.torchscript))  # type: ignore[union-attr]


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """`module` as TorchScript (as is if it already is)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    try:
        return torch.jit.script(module)
    except Exception as error:  # TorchScript raises many types for code it cannot compile
        raise ModelError(f"cannot export the segmenter to TorchScript ({str(error).splitlines()[0]})") from None
