"""Time per window of every segmenter source (models/sources/) on the default segmenter's architecture:
the default bundle's SmallUNet exported to TorchScript, a torch.export archive and ONNX, plus the built-in
net and a module:factory returning it, each loaded through the registry as `segment` loads it and called
as the engine calls it (`probabilities`, inference mode, channels_last), on the same seeded windows.

    python benchmarks/segmenter_sources.py [--batch-size 4] [--windows 64] [--device cpu] [--threads 1]

Prints a Markdown table (ms per window, and the share of pixels whose label matches the built-in net's)
and the machine; onnxruntime gets the same thread count as torch. The sources take turns for --rounds
rounds and each keeps its fastest round, so a busy machine slows them alike rather than whichever ran
while it was busy.
"""

from __future__ import annotations

import argparse
import os
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


def per_window_ms(segmenter: Segmenter, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, float, torch.Tensor]:
    """Wall and CPU milliseconds per window over all `images`, in batches, after two warm-up batches; and
    the labels. CPU time counts every thread of this process (torch's and onnxruntime's), so it moves
    less than wall time when other processes share the cores."""
    segmenter.to(device, channels_last=True)
    labels = []
    with torch.inference_mode():
        for _ in range(2):
            segmenter.probabilities(images[:batch_size].to(device))
        start, cpu_start = time.perf_counter(), time.process_time()
        for first in range(0, images.shape[0], batch_size):
            labels.append(segmenter.probabilities(images[first : first + batch_size].to(device)).argmax(1).cpu())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return 1000 * seconds / images.shape[0], 1000 * cpu_seconds / images.shape[0], torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch (and so onnxruntime) threads; default torch's")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import onnxruntime

    device = torch.device(args.device)
    h, w = DEFAULT.input_size
    images = torch.rand(args.windows, 3, h, w, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as scratch:
        made = sources(Path(scratch))
        best: dict[str, tuple[float, float]] = {}
        labels: dict[str, torch.Tensor] = {}
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            for kind, segmenter in made.items():
                wall, cpu, labels[kind] = per_window_ms(segmenter, images, args.batch_size, device)
                best[kind] = (min(wall, best.get(kind, (wall, cpu))[0]), min(cpu, best.get(kind, (wall, cpu))[1]))
        reference = labels["architecture"]
        rows = [(kind, *best[kind], float((labels[kind] == reference).float().mean())) for kind in made]
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {DEFAULT.name} segmenter, {h}x{w} windows, batch {args.batch_size}, "
          f"{args.windows} windows, device {args.device}, fastest of {args.rounds} rounds; load average "
          f"{load:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| source | wall ms per window | CPU ms per window | labels as the built-in net |")
    print("|---|---|---|---|")
    for kind, wall, cpu, same in rows:
        print(f"| {kind} | {wall:.1f} | {cpu:.1f} | {100 * same:.3f}% |")


if __name__ == "__main__":
    main()
