"""Segmenter sources: every way a segmenter can come, one module each, behind this one table.

A model.toml names its source by key (`[segmenter] onnx = "net.onnx"`); `--segmenter` by the file's
suffix, or `package.module:function` for a Python factory. Never by a mode flag. Each source module has

    load(spec, directory, contract, *, trust_model, named_by) -> Segmenter
    save(segmenter, directory, spec) -> None   # write the files `spec` names into a bundle folder

and every source meets the same contract tests (tests/models/test_sources.py).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from magnet_cli.errors import MagnetError, ModelError

if TYPE_CHECKING:
    from magnet_cli.models.bundle import SegmenterSpec
    from magnet_cli.models.segmenter import Segmenter


@dataclass(frozen=True)
class Contract:
    """What the caller knows of a segmenter: None where the model itself must say (classes from a probe,
    the input size from a model with a fixed one)."""

    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # The input channels where the caller knows them (a bundle's bands); a model file that states its own
    # (ONNX, .pt2, a built-in architecture) must agree.
    channels: int | None = None


def bands_channels(bands: tuple[int, ...] | None) -> int | None:
    """The input channels a band list implies: one per band; None for no list, or one band (which a
    3-channel model takes as grey, replicated)."""
    return len(bands) if bands and len(bands) > 1 else None


@dataclass(frozen=True)
class Source:
    """One way a segmenter comes: its [segmenter] key, the suffixes of its files, and what it implies."""

    kind: str  # its key in [segmenter]: architecture = "small_unet", onnx = "net.onnx", ...
    module: str  # its module in this package, imported on first use (onnxruntime only when needed)
    description: str
    suffixes: tuple[str, ...] = ()  # files it is chosen for by --segmenter
    holds_weights: bool = False  # the file named is the whole model (no segmenter.weights beside it)
    runs_code: str | None = None  # why loading it can run arbitrary Python (then only with --trust-model)
    digests_file: bool = False  # its digest is the file's sha256 (no state dict to digest without running it)
    reads_size: bool = False  # the file records its input shape (channels; a fixed batch and window size, if any)

    def _module(self) -> Any:
        return importlib.import_module(f"magnet_cli.models.sources.{self.module}")

    def load(self, spec: "SegmenterSpec", directory: Path | None, contract: Contract, *, trust_model: bool = False,
             named_by: str | None = None) -> "Segmenter":
        """The segmenter `spec` names. `directory`: the bundle folder its files are in; None for a
        --segmenter given on the command line (files as given, a factory's own initial weights)."""
        if self.runs_code and not trust_model:
            value = getattr(spec, self.kind)
            where = f"{named_by}: segmenter.{self.kind} {value!r}" if named_by is not None else f"--segmenter {value}"
            raise ModelError(f"{where} {self.runs_code}; give --trust-model if you trust it")
        segmenter = self._module().load(spec, directory, contract, named_by=named_by)
        if spec.outputs is not None:  # model.toml says what the model returns
            segmenter.outputs = spec.outputs
        return checked(segmenter, contract, getattr(spec, self.kind), probe=directory is None)

    def save(self, segmenter: "Segmenter", directory: Path, spec: "SegmenterSpec") -> None:
        self._module().save(segmenter, directory, spec)

    def digest_file(self, path: Path) -> str:
        """The digest of a segmenter file of this source (`digests_file`) without loading it."""
        return self._module().digest_file(path)

    def channels_in_file(self, path: Path) -> int | None:
        """The input channels a segmenter file of this source records, read without loading the model;
        None where its header does not say or cannot be read without running it."""
        reader = getattr(self._module(), "input_channels", None)
        return reader(path) if reader is not None else None


SOURCES: dict[str, Source] = {
    source.kind: source
    for source in (
        Source("architecture", "builtin", "a built-in architecture with a state dict"),
        Source("torchscript", "torchscript", "TorchScript (deprecated upstream)", (".ts", ".pt", ".pth", ".jit"),
               holds_weights=True),
        Source("export", "export", "a torch.export archive", (".pt2",), holds_weights=True, digests_file=True,
               reads_size=True,
               # torch.export.load unpickles the archive's weights with weights_only=False (torch 2.13,
               # export/pt2_archive/_package.py; its docstring: "Never load data from an untrusted source").
               runs_code="is a torch.export archive, which torch unpickles (it can run code)"),
        Source("onnx", "onnx", "ONNX, run by onnxruntime", (".onnx",), holds_weights=True, digests_file=True,
               reads_size=True),
        Source("factory", "factory", "package.module:function, called with the class count",
               runs_code="is Python code that magnet-cli would import and run"),
    )
}
KINDS = tuple(SOURCES)


def is_factory(reference: str) -> bool:
    """`package.module:function` rather than a file (a Windows drive letter is not a factory)."""
    return ":" in reference and not Path(reference).exists() and reference[1:3] != ":\\"


def source_for(reference: str) -> Source:
    """The source of a --segmenter value: a factory by its colon, a file by its suffix."""
    if is_factory(reference):
        return SOURCES["factory"]
    suffix = Path(reference).suffix.lower()
    for source in SOURCES.values():
        if suffix in source.suffixes:
            return source
    known = "; ".join(f"{', '.join(s.suffixes)} ({s.description})" for s in SOURCES.values() if s.suffixes)
    raise ModelError(f"--segmenter {reference}: unknown kind of segmenter file {suffix or '(no suffix)'!r}; known: "
                     f"{known}; or package.module:function (a Python factory, with --trust-model)")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes: the digest of a segmenter known only as a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelError(f"{path}: no such {what} file")
    return path


def checked(segmenter: "Segmenter", contract: Contract, name: str, *, probe: bool) -> "Segmenter":
    """The loaded segmenter with the caller's contract applied and met: input size (the model's fixed one
    where the caller gives none), normalisation, and the class count. `probe`: run one blank batch to learn
    the class count or check the caller's (a bare file; a bundle's model.toml states its classes)."""
    from magnet_cli.models.segmenter import check_stats

    fixed = segmenter.input_size if all(segmenter.input_size) else None
    if contract.input_size is not None:
        if fixed is not None and tuple(fixed) != tuple(contract.input_size):
            raise ModelError(f"{name}: the model takes {fixed[0]}x{fixed[1]} windows, not the "
                             f"{contract.input_size[0]}x{contract.input_size[1]} given")
        segmenter.input_size = tuple(contract.input_size)  # type: ignore[assignment]
    elif fixed is None:
        raise ModelError(f"{name}: the model takes any window size; say which it was trained at (--input-size HxW)")
    if contract.channels is not None and segmenter.input_channels != contract.channels:
        raise ModelError(f"{name}: the model takes {segmenter.input_channels} input channel(s) but its bands name "
                         f"{contract.channels}")
    check_stats(contract.mean, contract.std, segmenter.input_channels)
    segmenter.mean, segmenter.std = contract.mean, contract.std
    segmenter.num_classes = probe_classes(segmenter, name) if probe else contract.num_classes  # type: ignore[assignment]
    if contract.num_classes is not None and segmenter.num_classes != contract.num_classes:
        raise ModelError(f"{name}: segmenter outputs {segmenter.num_classes} classes but --classes gives {contract.num_classes}")
    return segmenter


def probe_classes(segmenter: "Segmenter", name: str) -> int:
    """Run one blank batch through the model to learn its class count (and that it runs at all)."""
    h, w = segmenter.input_size
    try:
        with torch.no_grad():
            out = segmenter.run(torch.zeros(segmenter.fixed_batch or 1, segmenter.input_channels, h, w))
    except MagnetError:
        raise
    except Exception as error:  # a user's model failing on a blank image is the user's to fix, not a bug
        raise ModelError(f"{name}: the segmenter fails on a {h}x{w} input ({str(error).splitlines()[0]})") from None
    if out.ndim != 4:
        raise ModelError(f"{name}: segmenter must return maps shaped (N, C, h, w), got {tuple(out.shape)}")
    return int(out.shape[1])
