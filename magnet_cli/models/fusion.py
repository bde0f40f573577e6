"""Folding a BatchNorm into the convolution before it, for inference: one place for both networks."""

from __future__ import annotations

from typing import Iterable

from torch import nn


def fold_conv_bn_pairs(pairs: Iterable[tuple[nn.Module, str, str]]) -> None:
    """For each (owner, convolution attribute, BatchNorm attribute): replace the convolution by one with
    the BatchNorm folded in (eval statistics) and the BatchNorm by an identity, in place. Call on a copy
    in eval mode: the folded layers no longer train."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for owner, conv_name, bn_name in pairs:
        setattr(owner, conv_name, fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name)))
        setattr(owner, bn_name, nn.Identity())
