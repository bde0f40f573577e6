"""The MagNet refinement network (paper Fig. 4) with the reference implementation's key layout."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from magnet_cli.errors import ModelError
from magnet_cli.models.refiner_names import REFERENCE, REFINER_ARCHITECTURES
from magnet_cli.models.upsample import upsample_class_map

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


class RefinerNet(nn.Module):
    """What every refiner architecture shares: logits R from a coarse map Y and a fine segmentation O (both
    probabilities), through an input BatchNorm `bn0` on cat(Y, O) (or cat(O, Y)) and a last 1x1
    convolution `seg_conv` to the classes. Subclasses build `body` and list their conv+BN pairs."""

    architecture = REFERENCE

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

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        pair = (coarse, fine) if self.input_order == "coarse_fine" else (fine, coarse)
        return self.forward_joined(torch.cat(pair, dim=1))

    def forward_joined(self, joined: torch.Tensor) -> torch.Tensor:
        """The logits for Y and O already joined on the channel axis in `input_order` (the engine builds
        that input in channels_last directly, saving a copy)."""
        return self.body(self.bn0(joined))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(owner, convolution attribute, BatchNorm attribute) for each BatchNorm that follows a convolution."""
        raise NotImplementedError


def _conv_bn_relu(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(outputs, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


class Refiner(RefinerNet):
    """The reference architecture (paper Fig. 4) with the reference implementation's key layout."""

    architecture = REFERENCE

    def __init__(self, num_classes: int, input_order: InputOrder = "coarse_fine") -> None:
        super().__init__(num_classes, input_order)
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

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.seg_conv(self.residual(x))

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        pairs: list[tuple[nn.Module, str, str]] = [(self, "conv1", "bn1"), (self, "conv2", "bn2")]
        for block in self.residual:
            pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
        return pairs


LITE_WIDTH = 32


class LiteRefiner(RefinerNet):
    """Four 3x3 conv+BN+ReLU layers of 32 channels, then the 1x1 to classes. The reference spends ~70% of
    its time in 64- and 128-channel layers at full resolution and most of the rest in element-wise work on
    128-channel maps (benchmarks/refiner_cost.py); this keeps its
    9 px receptive field and full resolution (roads are 2-6 px wide) at 32 channels, a multiple of
    oneDNN's channel block (24 channels measured no faster than 32)."""

    architecture = "lite"

    def __init__(self, num_classes: int, input_order: InputOrder = "coarse_fine") -> None:
        super().__init__(num_classes, input_order)
        self.layers = nn.Sequential(_conv_bn_relu(2 * num_classes, LITE_WIDTH), *(_conv_bn_relu(LITE_WIDTH, LITE_WIDTH) for _ in range(3)))
        self.seg_conv = nn.Conv2d(LITE_WIDTH, num_classes, kernel_size=1, bias=False)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg_conv(self.layers(x))

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        return [(layer, "0", "1") for layer in self.layers]


class HalfRefiner(RefinerNet):
    """A 3x3 stride-2 conv+BN+ReLU to half resolution, two more 3x3 layers there (32 channels), the 1x1 to
    classes, bilinear upsampling to the window, plus a full-resolution 3x3 skip from the input straight to
    the classes so a 2 px road in O can survive. A quarter of the pixels for the body: ~1/15 of the
    reference's CPU time per window (benchmarks/refiner_cost.py), seeing 2x farther at the coarse scale."""

    architecture = "half"
    width = LITE_WIDTH  # channels of the half-resolution body
    skip_hidden = 0  # channels of a hidden 3x3 conv+BN+ReLU in the full-resolution skip (0: a linear 3x3)

    def __init__(self, num_classes: int, input_order: InputOrder = "coarse_fine") -> None:
        super().__init__(num_classes, input_order)
        width, inputs = self.width, 2 * num_classes
        self.layers = nn.Sequential(_conv_bn_relu(inputs, width, stride=2), *(_conv_bn_relu(width, width) for _ in range(2)))
        self.seg_conv = nn.Conv2d(width, num_classes, kernel_size=1, bias=False)
        if self.skip_hidden:
            self.skip = nn.Sequential(_conv_bn_relu(inputs, self.skip_hidden), nn.Conv2d(self.skip_hidden, num_classes, kernel_size=1, bias=False))
        else:
            self.skip = nn.Conv2d(inputs, num_classes, kernel_size=3, padding=1, bias=False)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        coarse = self.seg_conv(self.layers(x))
        upsampled = upsample_class_map(coarse, x.shape[-2:])
        return upsampled + self.skip(x)

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        pairs = [(layer, "0", "1") for layer in self.layers]
        return pairs + ([(self.skip[0], "0", "1")] if self.skip_hidden else [])


class HalfWideRefiner(HalfRefiner):
    """`half` with a 64-channel body and a nonlinear full-resolution skip (16 hidden channels): twice the
    half-resolution width bought back most of the accuracy `half` lost on roads against the reference,
    at ~1/8 of the reference's CPU time per window (benchmarks/refiner_cost.py)."""

    architecture = "half-wide"
    width = 64
    skip_hidden = 16


# One registry: a name (models/refiner_names.py, torch-free for settings) -> its network.
ARCHITECTURES: dict[str, type[RefinerNet]] = {net.architecture: net for net in (Refiner, LiteRefiner, HalfRefiner, HalfWideRefiner)}
assert tuple(ARCHITECTURES) == tuple(REFINER_ARCHITECTURES), "models/refiner_names.py and ARCHITECTURES disagree"


def architecture_named(name: str, where: str = "refiner architecture") -> type[RefinerNet]:
    """The network class of `name`; a ModelError naming the choices otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ModelError(f"{where} {name!r} is not one of {', '.join(ARCHITECTURES)}") from None


def build_refiner(architecture: str, num_classes: int, input_order: InputOrder = "coarse_fine") -> RefinerNet:
    return architecture_named(architecture)(num_classes, input_order)


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved from nn.DataParallel prefix every key with 'module.'."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return state


def load_refiner(
    path: Path | str, input_order: InputOrder | None = None, num_classes: int | None = None, architecture: str | None = None
) -> RefinerNet:
    """Load a refiner checkpoint: ours ({"state_dict", "num_classes", "input_order", "architecture"}) or a
    reference plain state dict (then `input_order` defaults to the reference test.py order, fine_coarse).
    `architecture` (a bundle's [refiner] architecture) wins over the checkpoint's; neither: the reference."""
    from magnet_cli.models.weights import read_weights_file

    path = Path(path)
    payload = read_weights_file(path, "refiner checkpoint")
    if "state_dict" in payload and isinstance(payload["state_dict"], dict):
        state = _strip_prefixes(payload["state_dict"])
        order = input_order or payload.get("input_order", "coarse_fine")
        recorded = payload.get("architecture")
    else:
        state = _strip_prefixes(payload)
        order = input_order or "fine_coarse"
        recorded = None
    network = architecture_named(architecture or recorded or REFERENCE, f"{path}: refiner architecture")
    weight = state.get("seg_conv.weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ModelError(f"{path}: not a MagNet refiner checkpoint (no seg_conv.weight)")
    classes = int(weight.shape[0])
    if num_classes is not None and classes != num_classes:
        raise ModelError(f"{path}: refiner has {classes} classes but the segmenter has {num_classes}")
    refiner = network(classes, order)  # type: ignore[arg-type]
    if "bn0.weight" not in state:
        # The reference can be built with use_bn=False; an identity input BatchNorm reproduces that.
        refiner.bn0 = nn.Identity()  # type: ignore[assignment]
    try:
        refiner.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(f"{path}: refiner weights do not match the {network.architecture} architecture ({first})") from None
    trained_with = payload.get("segmenter_sha256") if "state_dict" in payload else None
    refiner.segmenter_sha256 = trained_with if isinstance(trained_with, str) else None
    return refiner.eval()


def save_refiner(refiner: RefinerNet, path: Path | str) -> None:
    """Save with our metadata so the architecture, the input order and the segmenter it was trained over
    travel with the weights (a lone --refiner file still says what it is and what it pairs with)."""
    payload = {
        "state_dict": refiner.state_dict(), "num_classes": refiner.num_classes, "input_order": refiner.input_order,
        "architecture": refiner.architecture,
    }
    if refiner.segmenter_sha256 is not None:
        payload["segmenter_sha256"] = refiner.segmenter_sha256
    torch.save(payload, Path(path))


def fuse_for_inference(refiner: RefinerNet) -> RefinerNet:
    """A copy with every BatchNorm that follows a convolution folded into it (eval only).

    Same function up to float rounding, about a fifth less CPU time. The input BatchNorm (bn0) stays:
    it precedes a zero-padded convolution, and folding it would change the border pixels.
    """
    from magnet_cli.models.fusion import fold_conv_bn_pairs

    fused = copy.deepcopy(refiner).eval()
    fold_conv_bn_pairs(fused.conv_bn_pairs())
    return fused
