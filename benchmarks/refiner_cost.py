"""Where the refiner's time goes: per layer and per block, per window, for every refiner architecture
(models/refiner.py), then each one's share of a whole MagNet run on a held-out scene.

    python benchmarks/refiner_cost.py                                  # every architecture, 4096^2 run
    python benchmarks/refiner_cost.py --models weights/default,/tmp/lite-bundle --size 2048
    python benchmarks/refiner_cost.py --size 0                         # per-window costs only

Per window: the network as the engine runs it (BatchNorms folded, channels_last, inference mode, one
window per call as on CPU), on one thread, in CPU seconds (robust to other jobs on the machine): the
whole forward, and each leaf layer alone on the input it gets in a forward pass. Weights do not change
the time, so untrained networks are timed.
Whole run: the default bundle with each architecture's refiner (untrained: for time only) and each
trained bundle given with --models (time and mIoU), through the same Engine as `magnet segment`.
Timings on shared machines are noisy: compare the ratios inside one run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn

from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.models.bundle import load_bundle
from magnet_cli.models.default import default_model_dir
from magnet_cli.models.refiner import ARCHITECTURES, RefinerNet, build_refiner, fuse_for_inference
from magnet_cli.pipeline import Engine
from magnet_cli.settings import InferenceSettings, RunSettings
from magnet_cli.synthetic import synth
from precision import HELD_OUT_SEED, labels_of  # benchmarks/precision.py: one engine run on one scene

# CPU time of this process, not wall time: on a machine other jobs share, a forward pass preempted
# halfway costs no more CPU, so the per-window figures hold under load (on one thread, CPU time is the
# time the window takes; with more threads it adds up their spinning too).
CLOCK = time.process_time


def inference_form(refiner: RefinerNet) -> nn.Module:
    """The refiner as pipeline.Engine runs it on CPU."""
    return fuse_for_inference(refiner).to(memory_format=torch.channels_last)  # type: ignore[call-arg]


def block_of(name: str) -> str:
    """"residual.0.conv2" -> "residual.0", "layers.1.0" -> "layers.1", "conv1" -> "conv1"."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def conv_macs(module: nn.Module, output: torch.Tensor) -> int:
    if not isinstance(module, nn.Conv2d):
        return 0
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return output[0].numel() * module.in_channels // module.groups * kernel


def per_layer(net: nn.Module, pair: tuple[torch.Tensor, torch.Tensor], repeats: int) -> dict[str, tuple[float, int]]:
    """Fastest of `repeats` seconds, and multiply-accumulates, per window of every leaf module, each run
    alone on the input it gets in a forward pass (the fastest run is the least disturbed by other jobs)."""
    calls: dict[str, tuple[nn.Module, tuple]] = {}
    macs: dict[str, int] = {}
    handles = []
    for name, module in net.named_modules():
        if list(module.children()) or isinstance(module, nn.Identity):
            continue

        def record(module, inputs, output, name=name):
            calls[name] = (module, tuple(i.clone() for i in inputs))
            macs[name] = conv_macs(module, output)

        handles.append(module.register_forward_hook(record))
    with torch.inference_mode():
        net(*pair)
        for handle in handles:
            handle.remove()
        seconds = {}
        for name, (module, inputs) in calls.items():
            module(*inputs)  # warm-up
            runs = []
            for _ in range(repeats):
                start = CLOCK()
                module(*inputs)
                runs.append(CLOCK() - start)
            seconds[name] = min(runs)
    return {name: (seconds[name], macs[name]) for name in calls}


def whole_forward(nets: dict[str, nn.Module], pair: tuple[torch.Tensor, torch.Tensor], repeats: int) -> dict[str, float]:
    """Fastest of `repeats` seconds per window of each network, the networks interleaved so that load from
    other jobs falls on all of them alike."""
    times: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        for name, net in nets.items():  # warm-up: oneDNN primitive caches
            net(*pair)
        for _ in range(repeats):
            for name, net in nets.items():
                start = CLOCK()
                net(*pair)
                times[name].append(CLOCK() - start)
    return {name: min(values) for name, values in times.items()}


def window_costs(architectures: list[str], classes: int, window: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    nets = {arch: inference_form(build_refiner(arch, classes).eval()) for arch in architectures}
    maps = torch.softmax(torch.randn(1, 2 * classes, window, window), 1)
    pair = tuple(m.contiguous(memory_format=torch.channels_last) for m in (maps[:, :classes], maps[:, classes:]))
    whole = whole_forward(nets, pair, repeats)  # type: ignore[arg-type]
    reference = whole[architectures[0]]
    print(f"\n### Per window ({window}x{window}, {classes} classes, CPU time, fastest of {repeats}; BatchNorms folded, channels_last)\n")
    print("| architecture | parameters | GMAC / window | CPU ms / window | speed-up vs " + architectures[0] + " |")
    print("|---|---|---|---|---|")
    layers = {arch: per_layer(net, pair, repeats) for arch, net in nets.items()}  # type: ignore[arg-type]
    for arch, net in nets.items():
        parameters = sum(p.numel() for p in build_refiner(arch, classes).parameters())
        gmac = sum(m for _, m in layers[arch].values()) / 1e9
        print(f"| {arch} | {parameters:,} | {gmac:.2f} | {1000 * whole[arch]:.1f} | {reference / whole[arch]:.1f}x |")
    for arch in architectures:
        blocks: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for name, (seconds, mac) in layers[arch].items():
            blocks[block_of(name)][0] += seconds
            blocks[block_of(name)][1] += mac
        hooked = sum(seconds for seconds, _ in blocks.values())
        blocks["rest (concatenation, residual adds, upsampling, calls)"] = [max(whole[arch] - hooked, 0.0), 0]
        print(f"\n{arch}: per block, each layer timed alone (sum of layers {1000 * hooked:.1f} ms, "
              f"whole forward {1000 * whole[arch]:.1f} ms)\n")
        print("| block | CPU ms / window | share of the forward | GMAC |")
        print("|---|---|---|---|")
        for block, (seconds, mac) in blocks.items():
            print(f"| {block} | {1000 * seconds:.2f} | {100 * seconds / max(whole[arch], hooked):.0f}% | {mac / 1e9:.3f} |")
    return whole


def whole_runs(architectures: list[str], models: list[str], size: int, device: str) -> None:
    """Patch processing, then MagNet with the default bundle's segmenter and each refiner, on one held-out
    scene (the issue's target: MagNet within 4x patch processing's time)."""
    runs: list[tuple[str, object, bool]] = []
    base = load_bundle(default_model_dir())
    for arch in architectures:  # untrained: time only
        bundle = load_bundle(default_model_dir())
        if arch != base.refiner.architecture:  # type: ignore[union-attr]
            torch.manual_seed(0)
            bundle.refiner = build_refiner(arch, bundle.num_classes).eval()
        runs.append((f"default segmenter + {arch} refiner" + ("" if arch == base.refiner.architecture else " (untrained)"),  # type: ignore[union-attr]
                     bundle, arch == base.refiner.architecture))  # type: ignore[union-attr]
    for folder in models:
        bundle = load_bundle(folder)
        runs.append((f"{folder} ({bundle.refiner.architecture})", bundle, True))  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as scratch:
        image, mask = synth(scratch, size=size, seed=HELD_OUT_SEED, count=1, run=RunSettings(progress=False))[0]
        truth = torch.from_numpy(tifffile.imread(mask).astype(np.int64))
        print(f"\n### Whole MagNet run (synth seed {HELD_OUT_SEED}, {size}^2, --mode magnet, --device {device})\n")
        print("| model | s | CPU s | segmenter s | refiner s | refiner share | vs patch (CPU s) | mIoU |")
        print("|---|---|---|---|---|---|---|---|")
        patch = None
        for label, bundle, trained in [("patch processing (default bundle, no refiner)", base, True), *runs]:
            mode = "patch" if patch is None else "magnet"
            engine = Engine(bundle, InferenceSettings(mode=mode, device=device, precision="fp32"))  # type: ignore[arg-type]
            cpu = CLOCK()
            labels, times = labels_of(engine, image, size)
            cpu = CLOCK() - cpu
            patch = patch or cpu
            miou = f"{100 * mean_iou(confusion(torch.from_numpy(labels), truth, bundle.num_classes, 255)):.2f}" if trained else "-"  # type: ignore[attr-defined]
            print(f"| {label} | {times['seconds']:.2f} | {cpu:.2f} | {times['segmenter']:.2f} | {times['refiner']:.2f} | "
                  f"{100 * times['refiner'] / times['seconds']:.0f}% | {cpu / patch:.1f}x | {miou} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES), help="the first is the one compared against")
    parser.add_argument("--models", default="", help="trained bundles to run whole (comma-separated folders)")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096, help="whole-run scene size; 0: no whole run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the per-window timing (0: torch's "
                        "default); the whole run uses torch's default")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    architectures = args.architectures.split(",")
    print(f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}; per window on "
          f"{torch.get_num_threads()} thread(s), whole run on {threads}.")
    window_costs(architectures, args.classes, args.window, args.repeats)
    torch.set_num_threads(threads)
    if args.size:
        whole_runs(architectures, [m for m in args.models.split(",") if m], args.size, args.device)


if __name__ == "__main__":
    main()
