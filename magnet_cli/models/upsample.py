"""The built-in networks' bilinear upsampling of class maps (a few channels, one per class)."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


def upsample_class_map(scores: torch.Tensor, size: List[int]) -> torch.Tensor:
    """F.interpolate (bilinear, align_corners=False) of (N, classes, h, w) scores to `size`, in fp32 and
    planar (NCHW) layout whatever the input's.

    On a CPU, PyTorch's bilinear kernel takes 2-4x as long on a channels_last map of 6 channels as on a
    planar one, and bf16 longer again (`benchmarks/step_costs.py`): under bf16 these upsamplings were
    ~23% of the default models' CPU time, now ~10% (`benchmarks/class_map_upsampling.py`). In fp32 the
    upsampled scores also keep no bf16 rounding.
    """
    if scores.dtype != torch.float32:
        # Only where needed: a graph traced in fp32 (torch.export) then keeps no dtype check of its own,
        # which would fail on the bf16 scores autocast gives it.
        scores = scores.float()
    return F.interpolate(scores.contiguous(), size=size, mode="bilinear", align_corners=False)
