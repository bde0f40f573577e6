"""The built-in networks' class-map upsampling: bilinear, fp32, planar; exportable and autocast-safe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.upsample import upsample_class_map


def test_upsample_class_map_is_bilinear_interpolation_in_fp32_planar_layout():
    scores = torch.randn(2, 6, 16, 12, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(scores, size=(32, 24), mode="bilinear", align_corners=False)
    for given in (scores, scores.contiguous(memory_format=torch.channels_last)):
        got = upsample_class_map(given, [32, 24])
        assert got.dtype == torch.float32 and got.is_contiguous()
        assert torch.allclose(got, expected, atol=1e-6)
    low = scores.bfloat16().contiguous(memory_format=torch.channels_last)  # what autocast hands it
    got = upsample_class_map(low, [32, 24])
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.allclose(got, F.interpolate(low.float(), size=(32, 24), mode="bilinear", align_corners=False), atol=1e-6)


def test_an_exported_builtin_segmenter_runs_under_bf16_autocast():
    # `segment --precision bf16` (or `auto` on a CPU with native bf16) runs a .pt2 model under autocast:
    # its traced graph must not assert the fp32 dtype it was traced with.
    model = SmallUNet(3, widths=(8, 16)).eval()
    images = torch.rand(1, 3, 32, 32)
    exported = torch.export.export(model, (images,)).module()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = exported(images)
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
