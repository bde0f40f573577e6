"""The MagNet refinement network (paper Fig. 4) with the reference implementation's key layout."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from magnet_cli.errors import ModelError

BN_MOMENTUM = 0.01

# Which map comes first in the refiner's input. The reference trains with cat(Y, O) ("coarse_fine",
# train.py) but evaluates with cat(O, Y) ("fine_coarse", test.py), so a checkpoint must say which.
InputOrder = Literal["coarse_fine", "fine_coarse"]
INPUT_ORDERS: tuple[str, ...] = ("coarse_fine", "fine_coarse")


class Bottleneck(nn.Module):
    """ResNet bottleneck block (expansion 4), key names as in torchvision and the reference."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Refiner(nn.Module):
    """Proposes refined logits R from a coarse map Y and a fine segmentation O (both probabilities)."""

    def __init__(self, num_classes: int, input_order: InputOrder = "coarse_fine") -> None:
        super().__init__()
        if input_order not in INPUT_ORDERS:
            raise ModelError(f"refiner input order must be one of {INPUT_ORDERS}, got {input_order!r}")
        self.num_classes = num_classes
        self.input_order = input_order
        # Digest of the segmenter this refiner was trained over (models.bundle.segmenter_digest); None
        # when unknown (a reference checkpoint, an older file, an untrained net).
        self.segmenter_sha256: str | None = None
        self.bn0 = nn.BatchNorm2d(2 * num_classes, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(2 * num_classes, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        projection = nn.Sequential(
            nn.Conv2d(64, 32 * Bottleneck.expansion, kernel_size=1, bias=False),
            nn.BatchNorm2d(32 * Bottleneck.expansion, momentum=BN_MOMENTUM),
        )
        self.residual = nn.Sequential(Bottleneck(64, 32, projection), Bottleneck(128, 32))
        self.seg_conv = nn.Conv2d(128, num_classes, kernel_size=1, bias=False)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        pair = (coarse, fine) if self.input_order == "coarse_fine" else (fine, coarse)
        x = self.bn0(torch.cat(pair, dim=1))
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.seg_conv(self.residual(x))


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from nn.DataParallel prefix every key with 'module.'."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return state


def load_refiner(path: Path | str, input_order: InputOrder | None = None, num_classes: int | None = None) -> Refiner:
    """Load a refiner checkpoint: ours ({"state_dict", "num_classes", "input_order"}) or a reference
    plain state dict (then `input_order` defaults to the reference test.py order, fine_coarse)."""
    from magnet_cli.models.weights import read_weights_file

    path = Path(path)
    payload = read_weights_file(path, "refiner checkpoint")
    if "state_dict" in payload and isinstance(payload["state_dict"], dict):
        state = _strip_prefixes(payload["state_dict"])
        order = input_order or payload.get("input_order", "coarse_fine")
    else:
        state = _strip_prefixes(payload)
        order = input_order or "fine_coarse"
    weight = state.get("seg_conv.weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ModelError(f"{path}: not a MagNet refiner checkpoint (no seg_conv.weight)")
    classes = int(weight.shape[0])
    if num_classes is not None and classes != num_classes:
        raise ModelError(f"{path}: refiner has {classes} classes but the segmenter has {num_classes}")
    refiner = Refiner(classes, order)  # type: ignore[arg-type]
    if "bn0.weight" not in state:
        # The reference can be built with use_bn=False; an identity input BatchNorm reproduces that.
        refiner.bn0 = nn.Identity()  # type: ignore[assignment]
    try:
        refiner.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(f"{path}: refiner weights do not match the architecture ({first})") from None
    trained_with = payload.get("segmenter_sha256") if "state_dict" in payload else None
    refiner.segmenter_sha256 = trained_with if isinstance(trained_with, str) else None
    return refiner.eval()


def save_refiner(refiner: Refiner, path: Path | str) -> None:
    """Save with our metadata so the input order, and the segmenter it was trained over, travel with the
    weights (a lone --refiner file still says what it pairs with)."""
    payload = {"state_dict": refiner.state_dict(), "num_classes": refiner.num_classes, "input_order": refiner.input_order}
    if refiner.segmenter_sha256 is not None:
        payload["segmenter_sha256"] = refiner.segmenter_sha256
    torch.save(payload, Path(path))


def fuse_for_inference(refiner: Refiner) -> Refiner:
    """A copy with every BatchNorm that follows a convolution folded into it (eval only).

    Same function up to float rounding, about a fifth less CPU time. The input BatchNorm (bn0) stays:
    it precedes a zero-padded convolution, and folding it would change the border pixels.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(refiner).eval()

    def fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        setattr(owner, conv_name, fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name)))
        setattr(owner, bn_name, nn.Identity())

    fold(fused, "conv1", "bn1")
    fold(fused, "conv2", "bn2")
    for block in fused.residual:
        for i in (1, 2, 3):
            fold(block, f"conv{i}", f"bn{i}")
        if block.downsample is not None:
            block.downsample = nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return fused
