"""Built-in architectures (models/builtin.py) with a state dict: `[segmenter] architecture = "small_unet"`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from magnet_cli.models.builtin import build_architecture
from magnet_cli.models.segmenter import Segmenter
from magnet_cli.models.weights import load_state
from magnet_cli.models.sources.torchscript import script

if TYPE_CHECKING:
    from magnet_cli.models.bundle import SegmenterSpec
    from magnet_cli.models.sources import Contract


def load(spec: "SegmenterSpec", directory: Path | None, contract: "Contract", *, named_by: str | None = None) -> Segmenter:
    if contract.num_classes is None:
        raise ValueError("a built-in architecture is built for a known class count")
    module = build_architecture(spec.architecture, contract.num_classes, **spec.options)  # type: ignore[arg-type]
    if directory is not None:
        load_state(module, directory / spec.file)
    return Segmenter(module.eval(), contract.num_classes, (0, 0), input_channels=module.in_channels)


def save(segmenter: Segmenter, directory: Path, spec: "SegmenterSpec") -> None:
    """The state dict, plus a TorchScript copy for other tools where the spec names one."""
    module = segmenter.module.cpu().eval()  # type: ignore[union-attr]
    torch.save(module.state_dict(), directory / spec.file)
    if spec.torchscript_export is not None:
        script(module).save(str(directory / spec.torchscript_export))
