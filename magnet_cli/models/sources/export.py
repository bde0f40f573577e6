"""torch.export archives (`.pt2`): the format PyTorch recommends in place of TorchScript.

torch.export.load unpickles parts of the archive with weights_only=False (torch 2.13,
export/pt2_archive/_package.py; its docstring: "Never load data from an untrusted source"), so an archive
can run code when read: the registry loads one only with --trust-model, like a factory.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from magnet_cli.errors import ModelError
from magnet_cli.models.segmenter import LOGITS, PROBABILITIES, Segmenter
from magnet_cli.models.sources import file_digest, require_file

if TYPE_CHECKING:
    from magnet_cli.models.bundle import SegmenterSpec
    from magnet_cli.models.sources import Contract

digest_file = file_digest  # the archive holds everything: its bytes are the model
SOFTMAX = ("aten.softmax.int", "aten._softmax.default", "aten.softmax.default")


class ExportedSegmenter(Segmenter):
    """A torch.export module: runs like any module; digested by its file (what a bundle copies)."""

    def digest(self) -> str:
        return digest_file(self.path) if self.path is not None else super().digest()


def load(spec: "SegmenterSpec", directory: Path | None, contract: "Contract", *, named_by: str | None = None) -> Segmenter:
    path = require_file((directory or Path()) / spec.export, "torch.export archive")  # type: ignore[operator]
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch raises many types for a foreign or newer archive
        raise ModelError(f"{path}: not a torch.export archive ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    channels, batch, size = input_shape(program, path)
    return ExportedSegmenter(program.module(), contract.num_classes or 0, size, input_channels=channels,
                             outputs=output_kind(program), fixed_batch=batch, path=path)


def input_shape(program: Any, path: Path) -> tuple[int, int | None, tuple[int, int]]:
    """(channels, fixed batch or None, fixed (h, w) or (0, 0)) of the program's one image input."""
    names = list(program.graph_signature.user_inputs)
    nodes = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    if len(nodes) != 1 or "val" not in nodes[0].meta or len(nodes[0].meta["val"].shape) != 4:
        raise ModelError(f"{path}: a segmenter takes one image batch (N, C, h, w); this program takes {len(nodes)} inputs")
    dims = [d if isinstance(d, int) else None for d in nodes[0].meta["val"].shape]
    if dims[1] is None:
        raise ModelError(f"{path}: the channel count must be fixed in the export")
    size = (dims[2], dims[3]) if dims[2] is not None and dims[3] is not None else (0, 0)
    return dims[1], dims[0], size  # type: ignore[return-value]


def output_kind(program: Any) -> str:
    """"probabilities" where the program ends in a softmax over classes, else "logits"."""
    output = next(n for n in program.graph.nodes if n.op == "output")
    first = output.args[0][0] if isinstance(output.args[0], (tuple, list)) else output.args[0]
    if getattr(first, "op", None) == "call_function" and str(first.target) in SOFTMAX and first.args[1] in (1, -3):
        return PROBABILITIES
    return LOGITS


def save(segmenter: Segmenter, directory: Path, spec: "SegmenterSpec") -> None:
    """Copy the archive the segmenter was read from; export its module where it came from elsewhere."""
    target = directory / spec.export  # type: ignore[operator]
    if segmenter.path is not None and segmenter.path.suffix == ".pt2":
        if segmenter.path.resolve() != target.resolve():
            shutil.copyfile(segmenter.path, target)
    else:
        export_archive(segmenter.module, target, segmenter.input_size, segmenter.input_channels)  # type: ignore[arg-type]


def export_archive(module: nn.Module, path: Path, input_size: tuple[int, int], channels: int = 3) -> Path:
    """`module` as a torch.export archive taking any batch of (channels, *input_size) windows."""
    example = torch.zeros(2, channels, *input_size)
    program = torch.export.export(module.cpu().eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    torch.export.save(program, str(path))
    return Path(path)
