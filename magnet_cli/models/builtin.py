"""Built-in segmenter architectures small enough to train and run on a CPU."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from magnet_cli.models.upsample import upsample_class_map


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """A compact U-Net: a strided encoder of `widths` channels and a light additive decoder.

    The first stage works at half resolution (a stride-2 stem) because full-resolution convolutions
    dominate CPU time while the refiner restores the fine detail MagNet needs.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels  # the bands it sees (model.toml: [segmenter.options] in_channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        self.encoders = nn.ModuleList()
        channels = widths[0]
        for width in widths:
            self.encoders.append(_conv_block(channels, width))
            channels = width
        self.laterals = nn.ModuleList(nn.Conv2d(width, widths[0] * 2, 1) for width in widths)
        self.head = nn.Sequential(
            nn.Conv2d(widths[0] * 2, widths[0] * 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0] * 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[0] * 2, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.stem(x)
        features: list[torch.Tensor] = []
        for index, encoder in enumerate(self.encoders):
            if index > 0:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = encoder(x)
            features.append(x)
        projected: list[torch.Tensor] = []
        for index, lateral in enumerate(self.laterals):
            projected.append(lateral(features[index]))
        # FPN-style top-down sum of lateral projections (indexing keeps it TorchScript-friendly).
        top = projected[-1]
        for index in range(len(projected) - 2, -1, -1):
            finer = projected[index]
            top = F.interpolate(top, size=finer.shape[-2:], mode="bilinear", align_corners=False) + finer
        logits = self.head(top)
        return upsample_class_map(logits, size)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_unet": SmallUNet,
}


def build_architecture(name: str, num_classes: int, **options: object) -> nn.Module:
    """Instantiate a built-in architecture by name; bad options are a ModelError, not a traceback."""
    from magnet_cli.errors import ModelError

    if name not in ARCHITECTURES:
        raise ModelError(f"unknown built-in architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[name](num_classes, **options)
    except (TypeError, ValueError, IndexError) as error:
        raise ModelError(f"architecture {name!r} with options {options}: {error}") from None


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """For inference: a copy of a built-in architecture with each BatchNorm that directly follows a
    convolution in a Sequential folded into that convolution (same function up to float rounding; 8-10%
    less CPU per segmenter call, benchmarks/step_costs.py). Any other module is returned as is:
    only in our own architectures do we know that a Sequential's layers run only in its order."""
    from magnet_cli.models.fusion import fold_conv_bn_pairs

    if not isinstance(module, tuple(ARCHITECTURES.values())):  # type: ignore[arg-type]
        return module
    folded = copy.deepcopy(module).eval()
    fold_conv_bn_pairs([
        (sequence, str(index), str(index + 1))
        for sequence in list(folded.modules()) if type(sequence) is nn.Sequential
        for index in range(len(sequence) - 1)
        if isinstance(sequence[index], nn.Conv2d) and isinstance(sequence[index + 1], nn.BatchNorm2d)
    ])
    return folded


def check_input_size(module: nn.Module, input_size: tuple[int, int], num_classes: int) -> None:
    """Run one blank window through a freshly built net so that a size it cannot take is a ModelError
    before training starts, not a traceback in the first step."""
    from magnet_cli.errors import ModelError
    from magnet_cli.models.segmenter import module_channels

    was_training = module.training
    try:
        with torch.no_grad():
            channels = getattr(module, "in_channels", None) or module_channels(module) or 3
            out = module.eval()(torch.zeros(1, channels, *input_size, device=next(module.parameters()).device))
    except RuntimeError as error:
        raise ModelError(f"input size {input_size[0]}x{input_size[1]} does not fit this architecture ({str(error).splitlines()[0]})") from None
    finally:
        module.train(was_training)
    if out.shape[1:] != (num_classes, *input_size):
        raise ModelError(f"the architecture maps a {input_size[0]}x{input_size[1]} window to {tuple(out.shape[1:])}, not ({num_classes}, {input_size[0]}, {input_size[1]})")
