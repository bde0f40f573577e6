"""Python factories: `package.module:function`, called with the class count. Importing a module and calling
a function run arbitrary Python (`os:_exit` ends the process), and a model is data a user may have
downloaded: the registry lets this run only with --trust-model."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from magnet_cli.errors import ModelError
from magnet_cli.models.segmenter import Segmenter
from magnet_cli.models.sources.torchscript import stated_channels
from magnet_cli.models.weights import load_state

if TYPE_CHECKING:
    from magnet_cli.models.bundle import SegmenterSpec
    from magnet_cli.models.sources import Contract


def load(spec: "SegmenterSpec", directory: Path | None, contract: "Contract", *, named_by: str | None = None) -> Segmenter:
    """The factory's module; in a bundle, with the weights beside model.toml."""
    reference = spec.factory
    if contract.num_classes is None:
        raise ModelError(f"segmenter factory {reference!r} needs --classes (it is called with the class count)")
    module = call_factory(reference, contract.num_classes)  # type: ignore[arg-type]
    if directory is not None:
        load_state(module, directory / spec.file)
    return Segmenter(module.eval(), contract.num_classes, (0, 0), input_channels=stated_channels(module, contract))


def call_factory(reference: str, num_classes: int) -> nn.Module:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"segmenter factory {reference!r} must look like 'package.module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"cannot import segmenter factory {reference!r}: {error}") from None
    try:
        module = factory(num_classes)
    except Exception as error:  # the user's code failing is the user's to fix: one line, not a traceback
        raise ModelError(f"segmenter factory {reference!r} failed: {type(error).__name__}: {error}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"segmenter factory {reference!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def save(segmenter: Segmenter, directory: Path, spec: "SegmenterSpec") -> None:
    torch.save(segmenter.module.cpu().state_dict(), directory / spec.file)  # type: ignore[union-attr]
