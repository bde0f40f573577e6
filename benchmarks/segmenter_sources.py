"""Time per window of every segmenter source (models/sources/) on the default segmenter's architecture:
the default bundle's SmallUNet exported to TorchScript, a torch.export archive and ONNX, plus the built-in
net and a module:factory returning it, each loaded through the registry as `segment` loads it and called
as the engine calls it (`probabilities`, inference mode, channels_last), on the same seeded windows.

    python benchmarks/segmenter_sources.py [--batch-size 4] [--windows 64] [--device cpu]

Prints a Markdown table (ms per window, and the share of pixels whose label matches the built-in net's)
and the machine; onnxruntime gets the same thread count as torch.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from magnet_cli.models.bundle import bundle_from_parts, load_bundle
from magnet_cli.models.default import packaged_model_dir
from magnet_cli.models.segmenter import Segmenter
from magnet_cli.models.sources import KINDS
from magnet_cli.models.sources.export import export_archive
from magnet_cli.models.sources.onnx import export_onnx
from magnet_cli.models.sources.torchscript import script

DEFAULT = load_bundle(packaged_model_dir())


def build(num_classes: int) -> torch.nn.Module:
    """The factory the `factory` row loads (`__main__:build`): the default bundle's net."""
    return DEFAULT.segmenter.module  # type: ignore[return-value]


def sources(folder: Path) -> dict[str, Segmenter]:
    """The default segmenter through every source, loaded as `--segmenter` / `--model` load it."""
    module, size = DEFAULT.segmenter.module, DEFAULT.input_size
    script(module).save(str(folder / "segmenter.ts"))
    export_archive(module, folder / "segmenter.pt2", size)  # type: ignore[arg-type]
    export_onnx(module, folder / "segmenter.onnx", size)  # type: ignore[arg-type]
    classes = DEFAULT.classes
    made = {
        "architecture": DEFAULT.segmenter,
        "torchscript": bundle_from_parts(folder / "segmenter.ts", classes, size, None).segmenter,
        "export": bundle_from_parts(folder / "segmenter.pt2", classes, None, None, trust_model=True).segmenter,
        "onnx": bundle_from_parts(folder / "segmenter.onnx", classes, None, None).segmenter,
        "factory": bundle_from_parts("__main__:build", classes, size, None, trust_model=True).segmenter,
    }
    assert set(made) == set(KINDS), "a new source needs a row here"
    return made


def per_window_ms(segmenter: Segmenter, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """Milliseconds per window over all `images`, in batches, after two warm-up batches; and the labels."""
    segmenter.to(device, channels_last=True)
    labels = []
    with torch.inference_mode():
        for _ in range(2):
            segmenter.probabilities(images[:batch_size].to(device))
        start = time.perf_counter()
        for first in range(0, images.shape[0], batch_size):
            labels.append(segmenter.probabilities(images[first : first + batch_size].to(device)).argmax(1).cpu())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return 1000 * seconds / images.shape[0], torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import onnxruntime

    device = torch.device(args.device)
    h, w = DEFAULT.input_size
    images = torch.rand(args.windows, 3, h, w, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as scratch:
        made = sources(Path(scratch))
        rows, reference = [], None
        for kind, segmenter in made.items():
            ms, labels = per_window_ms(segmenter, images, args.batch_size, device)
            reference = labels if reference is None else reference
            rows.append((kind, ms, float((labels == reference).float().mean())))
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {DEFAULT.name} segmenter, {h}x{w} windows, batch {args.batch_size}, "
          f"{args.windows} windows, device {args.device}\n")
    print("| source | ms per window | labels as the built-in net |")
    print("|---|---|---|")
    for kind, ms, same in rows:
        print(f"| {kind} | {ms:.1f} | {100 * same:.3f}% |")


if __name__ == "__main__":
    main()
