"""The segmenter interface every source (models/sources/) gives: a batch of windows in, per-class maps out.

The engine, both trainers and `benchmark` see only this: `num_classes`, `input_channels`, `input_size`,
`outputs` (what the model returns: "logits" or "probabilities"), `to(device)`, `__call__(images)` (the
model's own output) and `probabilities(images)`. `module` is the torch module where one exists (None for
an ONNX model), which is what training, digests and TorchScript exports need.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from magnet_cli.errors import ModelError, UsageError
from magnet_cli.models.weights import segmenter_digest

LOGITS = "logits"
PROBABILITIES = "probabilities"
OUTPUTS = (LOGITS, PROBABILITIES)


@dataclass
class Segmenter:
    """A model plus its input contract: (N, input_channels, h, w) floats in [0, 1] -> (N, C, h, w) logits
    or probabilities (`outputs`). This base runs a torch module (built-in, TorchScript, torch.export,
    factory); sources/onnx.py runs an ONNX graph behind the same calls."""

    module: nn.Module | None
    num_classes: int
    input_size: tuple[int, int]  # (h, w)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_channels: int = 3
    outputs: str = LOGITS
    # A model made for a fixed batch (an export with batch 1, say) gets windows in groups of that many,
    # the last group padded with blank windows; None: any batch.
    fixed_batch: int | None = None
    path: Path | None = None  # the file it was read from, where a bundle saved over it copies it from

    @property
    def trainable(self) -> bool:
        """Whether there is a torch module to train or export (not for an ONNX graph)."""
        return self.module is not None

    def to(self, device: torch.device | str, *, channels_last: bool = False) -> "Segmenter":
        """Move to `device` in eval mode; `channels_last`: oneDNN convolutions run about 3x faster in it
        on CPU (measured on the refiner), and modules that refuse it still run."""
        check_stats(self.mean, self.std, self.input_channels)
        module = self.module.to(device)  # type: ignore[union-attr]
        _eval(module)
        if channels_last:
            try:
                module = module.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
            except (RuntimeError, TypeError):  # some TorchScript modules refuse; they still run
                pass
        self.module = module
        return self

    def for_inference(self) -> "Segmenter":
        """This segmenter as inference runs it: a built-in architecture with its BatchNorms folded into
        the convolutions before them (models.builtin.fold_batch_norms); any other model as it is. A
        copy where anything changes, so the bundle keeps the trained layers (training, digests, saving)."""
        if self.module is None:
            return self
        from magnet_cli.models.builtin import fold_batch_norms

        module = fold_batch_norms(self.module)
        return self if module is self.module else replace(self, module=module)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The model's output (`outputs` says which) for normalised `images`, checked for shape."""
        images = standardize(images, self.mean, self.std)
        out = self._in_fixed_batches(images) if self.fixed_batch not in (None, images.shape[0]) else self.run(images)
        if out.ndim != 4 or out.shape[1] != self.num_classes:
            raise ModelError(f"segmenter returned shape {tuple(out.shape)}; expected (N, {self.num_classes}, h, w)")
        return out

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C, h, w) in float32: softmax of logits, a probability model's own output as is."""
        out = self(images).float()
        return torch.softmax(out, dim=1) if self.outputs == LOGITS else out

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The model on a batch it accepts, no normalisation or checks: what a source overrides."""
        out = self.module(images)  # type: ignore[misc]
        if isinstance(out, (tuple, list)):  # some backbones return (main, auxiliary)
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"segmenter returned {type(out).__name__}; expected a tensor (N, C, h, w)")
        return out

    def digest(self) -> str:
        """Content digest of the weights: which segmenter a refiner was trained over (models.bundle)."""
        return segmenter_digest(self.module)  # type: ignore[arg-type]

    def _in_fixed_batches(self, images: torch.Tensor) -> torch.Tensor:
        step = int(self.fixed_batch)  # type: ignore[arg-type]
        parts = []
        for first in range(0, images.shape[0], step):
            group = images[first : first + step]
            if group.shape[0] < step:
                blank = group.new_zeros((step - group.shape[0], *group.shape[1:]))
                group = torch.cat([group, blank])
            parts.append(self.run(group))
        return torch.cat(parts)[: images.shape[0]]


def check_stats(mean: tuple[float, ...] | None, std: tuple[float, ...] | None, channels: int) -> None:
    """--mean/--std give one value per input channel, or one value for every channel."""
    for option, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, channels):
            raise UsageError(f"{option} has {len(values)} values but the segmenter takes {channels} input channels "
                             f"(give {channels} values, one per band in --bands order, or one for all)")


def module_channels(module: nn.Module) -> int | None:
    """The input channels of a torch module that does not state them: those of its first 4-D weight (the
    first convolution, where the input enters; parameters come in the order the module defines them)."""
    for weight in module.state_dict().values():
        if isinstance(weight, torch.Tensor) and weight.ndim == 4:
            return int(weight.shape[1])
    return None


def standardize(images: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> torch.Tensor:
    """(images - mean) / std per channel (--mean/--std), or the images as they are when none is given:
    what a segmenter sees, in inference and in training."""
    if mean is None or std is None:
        return images
    mean_ = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_ = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_) / std_


def _eval(module: nn.Module) -> None:
    """Eval mode, where a module allows it: a torch.export module was traced in its mode and refuses both."""
    try:
        module.eval()
    except NotImplementedError:
        pass
