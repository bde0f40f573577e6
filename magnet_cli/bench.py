"""The benchmark harness behind `magnet benchmark`: accuracy, speed and memory of every mode, in one run.

Each segmentation runs `magnet segment` in a child process, so its peak RSS is its own (freed memory
of one run never hides in the next) and a crash of one run is reported, not fatal. Its mask is then
scored with `evaluate_pair` in this process. Four measurements:

- modes: mIoU, boundary F, seconds per image, peak memory and windows of each variant (the paper's
  table: downsample, patch, MagNet-Fast, MagNet, plus point-selection variants);
- scaling: time and peak memory of MagNet on the same synthetic scene at growing sizes;
- limit: the same windows through the segmenter (and refiner) alone, on tensors in memory, vs end to
  end: how close the pipeline gets to pure model compute;
- peer: MONAI's sliding_window_inference with the same segmenter, when MONAI is installed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from magnet_cli.errors import MagnetError, UsageError
from magnet_cli.evaluation import IGNORE_INDEX, Scores, evaluate_pair

PAPER_POINTS = 65536  # the paper's k (2^16 points per level)


@dataclass(frozen=True)
class Variant:
    """One way of running `segment`: a mode plus its point-selection settings."""

    name: str
    mode: str
    selection: str = "window"
    points: float | None = None  # None: the bundle's default
    description: str = ""

    def segment_options(self) -> list[str]:
        options = ["--mode", self.mode, "--selection", self.selection]
        if self.points is not None:
            options += ["--points", f"{self.points:g}"]
        return options


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("downsample", "downsample", description="coarsest level only, upsampled"),
        Variant("patch", "patch", description="finest level only, no context"),
        Variant("fast", "fast", selection="global", description="MagNet-Fast: 3 most uncertain windows per level"),
        Variant("magnet", "magnet", description="MagNet, points selected per window (streaming)"),
        Variant("magnet-global", "magnet", selection="global", description="MagNet, points selected over the whole level"),
        Variant("magnet-all-points", "magnet", points=1.0, description="MagNet, refiner output taken at every pixel"),
        Variant("magnet-paper-k", "magnet", points=PAPER_POINTS, description="MagNet, the paper's k = 2^16 points per level"),
    )
}
DEFAULT_VARIANTS = tuple(VARIANTS)
QUICK = {"data": "synth:9100:2:1024", "sizes": (512, 1024, 2048)}
FULL = {"data": "synth:9000:4:4096", "sizes": (2048, 4096, 8192, 16384)}
SCALING_SEED = 9500


# --- measured child processes -----------------------------------------------------------------------
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "wall_seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "stdout": done.stdout, "stderr": done.stderr[-4000:]}))
"""


def run_measured(command: Sequence[str]) -> dict:
    """Run a command in a child process; its exit code, output, wall time and peak RSS (MB)."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def segment_command(image: Path, output: Path, variant: Variant, model: str | None, batch_size: int, device: str) -> list[str]:
    command = [sys.executable, "-m", "magnet_cli.cli", "segment", str(image), "-o", str(output), "--overwrite",
               "--no-progress", "--json", "--batch-size", str(batch_size), "--device", device, *variant.segment_options()]
    if model is not None:
        command += ["--model", str(model)]
    return command


def _failure(run: dict, what: str) -> str:
    lines = [line for line in run["stderr"].strip().splitlines() if line.strip()]
    return f"{what} failed (exit {run['rc']}): {lines[-1] if lines else 'no message'}"


def run_segment(image: Path, output: Path, variant: Variant, model: str | None, batch_size: int, device: str) -> dict:
    """One measured `segment` run: the child's JSON summary plus wall time and peak RSS."""
    run = run_measured(segment_command(image, output, variant, model, batch_size, device))
    if run["rc"] != 0:
        raise MagnetError(_failure(run, f"segment {image.name} ({variant.name})"))
    (summary,) = json.loads(run["stdout"])
    return {**summary, "wall_seconds": run["wall_seconds"], "peak_rss_mb": run["peak_rss_mb"]}


# --- data -------------------------------------------------------------------------------------------
def dataset_pairs(data: str | Path, workdir: Path, classes: list, progress: bool) -> list[tuple[Path, Path]]:
    """(image, truth mask) files: a dataset folder's, or synth scenes rendered once into `workdir`."""
    from magnet_cli.io.open import list_images
    from magnet_cli.train.dataset import load_dataset, parse_synth_spec

    if isinstance(data, str) and data.startswith("synth:"):
        seed, count, size = parse_synth_spec(data)
        return render_scenes(workdir / f"synth_{seed}_{count}_{size}", seed, count, size, progress)
    folder = Path(data)
    load_dataset(folder, classes=classes, validate=False)  # the layout checks and their errors
    masks = {p.stem: p for p in list_images(folder / "masks")}
    return [(image, masks[image.stem]) for image in list_images(folder / "images")]


def render_scenes(folder: Path, seed: int, count: int, size: int, progress: bool) -> list[tuple[Path, Path]]:
    """Synth scenes as tiled pyramidal TIFFs, rendered unless already there."""
    from magnet_cli.synthetic import scene_name, synth

    pairs = [(folder / "images" / f"{scene_name(seed, i)}.tif", folder / "masks" / f"{scene_name(seed, i)}.tif") for i in range(count)]
    if not all(image.exists() and mask.exists() for image, mask in pairs):
        synth(folder, size=size, seed=seed, count=count, fmt="tiff", overwrite=True, progress=progress)
    return pairs


# --- the model-only limit ---------------------------------------------------------------------------
def model_only_seconds(engine, windows_per_level: Sequence[int], batch_size: int, refine: bool) -> float:
    """The segmenter (and the refiner below the root level) on in-memory tensors, batch by batch, for
    the given numbers of windows: the time of pure model compute for a run."""
    from magnet_cli.pipeline import RunStats

    h, w = engine.input_size
    c = engine.bundle.num_classes
    stats = RunStats()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, h, w, generator=generator)
    maps = torch.rand(batch_size, c, h, w, generator=generator).softmax(1)
    start = time.perf_counter()
    for level, count in enumerate(windows_per_level):
        for first in range(0, count, batch_size):
            n = min(batch_size, count - first)
            fine = engine.segment_windows(images[:n].to(engine.device), stats)
            if refine and level > 0:
                engine.propose_refinement(maps[:n].to(engine.device), fine, stats)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - start


def measure_limit(image: Path, model: str | None, batch_size: int, device: str, workdir: Path) -> dict:
    """End-to-end MagNet on one image (in this process, as a user's script would call it) vs the same
    windows through the models alone."""
    from magnet_cli.pipeline import Engine, InferenceSettings
    from magnet_cli.segmentation import resolve_model, segment

    bundle = resolve_model(model)
    engine = Engine(bundle, InferenceSettings(mode="magnet", batch_size=batch_size, device=device))
    model_only_seconds(engine, [2, 2], batch_size, True)  # warm-up: oneDNN / cuDNN primitive caches
    start = time.perf_counter()
    (result,) = segment([image], workdir / "limit.zarr", bundle=bundle, mode="magnet", batch_size=batch_size,
                        device=device, overwrite=True, progress=False)
    end_to_end = time.perf_counter() - start
    models = model_only_seconds(engine, result.windows_per_level, batch_size, True)
    segmenter = model_only_seconds(engine, result.windows_per_level, batch_size, False)
    return {
        "image": image.name,
        "windows": result.windows,
        "end_to_end_s": round(end_to_end, 2),
        "model_only_s": round(models, 2),
        "segmenter_only_s": round(segmenter, 2),
        "model_only_ratio": round(models / end_to_end, 3),
        "segmenter_only_ratio": round(segmenter / end_to_end, 3),
        "overhead_fraction": round(1 - models / end_to_end, 3),
    }


# --- the peer baseline ------------------------------------------------------------------------------
def monai_available() -> bool:
    try:
        import monai.inferers  # noqa: F401
    except ImportError:
        return False
    return True


def monai_segment(image: Path, output: Path, model: str | None, batch_size: int, device: str) -> dict:
    """MONAI's sliding_window_inference with our segmenter: the whole image in memory, non-overlapping
    windows of the model's input size at full resolution (our `patch` mode's windows), argmax written
    as a TIFF mask. Runs in a child process of `run_peer`."""
    import tifffile
    from monai.inferers import sliding_window_inference

    from magnet_cli.io.base import PixelNormalization, to_unit_rgb
    from magnet_cli.io.open import open_image
    from magnet_cli.pipeline import resolve_device
    from magnet_cli.segmentation import resolve_model

    bundle = resolve_model(model)
    torch_device = resolve_device(device)
    segmenter = bundle.segmenter.to(torch_device)
    start = time.perf_counter()
    with open_image(image) as source:
        pixels = source.read_level(0, 0, 0, source.height, source.width)
        whole = to_unit_rgb(pixels, PixelNormalization(None, bundle.value_range), image)[None]
    with torch.inference_mode():
        probabilities = sliding_window_inference(
            whole, roi_size=bundle.input_size, sw_batch_size=batch_size, overlap=0.0,
            predictor=lambda x: torch.softmax(segmenter(x.to(torch_device)), 1).cpu(),
        )
    labels = probabilities[0].argmax(0).to(torch.uint8).numpy()
    tifffile.imwrite(output, labels, tile=(512, 512), compression="zlib")
    return {"seconds": round(time.perf_counter() - start, 3)}


def run_peer(image: Path, output: Path, model: str | None, batch_size: int, device: str) -> dict:
    command = [sys.executable, "-m", "magnet_cli.bench", "monai", str(image), str(output), str(model or ""),
               str(batch_size), device]
    run = run_measured(command)
    if run["rc"] != 0:
        raise MagnetError(_failure(run, f"MONAI sliding_window_inference on {image.name}"))
    return {**json.loads(run["stdout"]), "wall_seconds": run["wall_seconds"], "peak_rss_mb": run["peak_rss_mb"]}


# --- the whole benchmark ----------------------------------------------------------------------------
@dataclass
class BenchmarkReport:
    machine: str
    model: str
    data: str
    images: int
    modes: list[dict] = field(default_factory=list)
    per_class: dict[str, list[dict]] = field(default_factory=dict)
    scaling: list[dict] = field(default_factory=list)
    limit: dict | None = None
    peer: dict | None = None
    selection_difference: float | None = None
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def machine_description(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    if device != "cpu" and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def benchmark(
    data: str | Path | None,
    output_dir: str | Path,
    *,
    model: str | Path | None = None,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    sizes: Sequence[int] | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    quick: bool = False,
    peer: bool = True,
    limit: bool = True,
    ignore_index: int = IGNORE_INDEX,
    workdir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> BenchmarkReport:
    """Run the modes on images + masks (or synth scenes), the scaling series, the limit and the peer;
    write benchmark.json, benchmark.md and PNG plots into `output_dir`."""
    from magnet_cli.segmentation import resolve_model

    started = time.perf_counter()
    preset = QUICK if quick else FULL
    data = data if data is not None else preset["data"]
    sizes = tuple(sizes) if sizes is not None else preset["sizes"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"--modes {','.join(unknown)}: unknown; known: {', '.join(VARIANTS)}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(workdir) if workdir is not None else output_dir / "work"
    scratch.mkdir(parents=True, exist_ok=True)
    bundle = resolve_model(model)
    model_arg = str(model) if model is not None else None
    classes = bundle.classes

    needs_images = bool(variants) or peer or limit
    pairs = dataset_pairs(data, scratch, classes, progress) if needs_images else []
    report = BenchmarkReport(machine_description(device), bundle.name, str(data), len(pairs))
    totals: dict[str, Scores] = {}
    runs: dict[str, list[dict]] = {}
    for name in variants:
        variant = VARIANTS[name]
        totals[name] = Scores.empty(classes)
        runs[name] = []
        for image, truth in pairs:
            mask = scratch / "masks" / name / f"{image.stem}.zarr"
            run = run_segment(image, mask, variant, model_arg, batch_size, device)
            totals[name].add(evaluate_pair(mask, truth, classes, ignore_index=ignore_index))
            runs[name].append(run)
            log(f"{name:18s} {image.name}: {run['seconds']:.1f} s, {run['peak_rss_mb']:.0f} MB")
        report.modes.append(_mode_row(variant, totals[name], runs[name]))
        report.per_class[name] = totals[name].to_dict()["per_class"]
    if "magnet" in totals and "magnet-global" in totals:
        report.selection_difference = round(totals["magnet-global"].miou - totals["magnet"].miou, 5)

    if peer and pairs and monai_available():
        scores, peer_runs = Scores.empty(classes), []
        for image, truth in pairs:
            mask = scratch / "masks" / "monai" / f"{image.stem}.tif"
            mask.parent.mkdir(parents=True, exist_ok=True)
            peer_runs.append(run_peer(image, mask, model_arg, batch_size, device))
            scores.add(evaluate_pair(mask, truth, classes, ignore_index=ignore_index))
        report.peer = {
            "name": "monai sliding_window_inference",
            "miou": round(scores.miou, 5),
            "seconds_per_image": round(float(np.mean([r["seconds"] for r in peer_runs])), 2),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in peer_runs), 1),
        }
    elif peer:
        report.peer = {"name": "monai sliding_window_inference", "skipped": "MONAI is not installed (pip install 'magnet-cli[peer]')"}

    for size in sizes:
        (image, _), = render_scenes(scratch / f"scaling_{size}", SCALING_SEED, 1, size, progress)
        run = run_segment(image, scratch / "scaling" / f"{size}.zarr", VARIANTS["magnet"], model_arg, batch_size, device)
        report.scaling.append({
            "size": size,
            "megapixels": round(size * size / 1e6, 2),
            "windows": run["windows"],
            "seconds": run["seconds"],
            "us_per_pixel": round(run["seconds"] / (size * size) * 1e6, 3),
            "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "peak_gpu_mb": run.get("peak_gpu_mb"),
        })
        log(f"scaling {size}^2: {run['seconds']:.1f} s, {run['peak_rss_mb']:.0f} MB")

    if limit and pairs:
        report.limit = measure_limit(pairs[0][0], model_arg, batch_size, device, scratch)
    report.seconds = round(time.perf_counter() - started, 1)
    report.plots = write_plots(report, output_dir)
    (output_dir / "benchmark.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (output_dir / "benchmark.md").write_text(markdown(report))
    return report


def _mode_row(variant: Variant, scores: Scores, runs: list[dict]) -> dict:
    summary = scores.to_dict()
    return {
        "mode": variant.name,
        "description": variant.description,
        "miou": round(summary["miou"], 5),
        "boundary_f": None if summary["boundary_f"] is None else round(summary["boundary_f"], 5),
        "pixel_accuracy": round(summary["pixel_accuracy"], 5),
        "seconds_per_image": round(float(np.mean([r["seconds"] for r in runs])), 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "peak_gpu_mb": max((r.get("peak_gpu_mb") or 0.0 for r in runs), default=0.0) or None,
        "windows_per_image": round(float(np.mean([r["windows"] for r in runs])), 1),
    }


# --- reports ----------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(report: BenchmarkReport) -> str:
    """The report as Markdown tables (what benchmarks/README.md quotes)."""
    lines = [
        f"Machine: {report.machine}. Model: {report.model}. Data: {report.data} ({report.images} images). "
        f"Benchmark time: {report.seconds:.0f} s.",
    ]
    if report.modes:
        lines += [
            "",
            "| mode | mIoU | boundary F | pixel acc. | s / image | peak RSS (MB) | windows / image |",
            "|---|---|---|---|---|---|---|",
        ]
    for row in report.modes:
        lines.append(
            f"| {row['mode']} | {_pct(row['miou'])} | {_pct(row['boundary_f'])} | {_pct(row['pixel_accuracy'])} | "
            f"{row['seconds_per_image']} | {row['peak_rss_mb']} | {row['windows_per_image']} |"
        )
    if report.peer and "miou" in report.peer:
        p = report.peer
        lines.append(f"| {p['name']} (peer) | {_pct(p['miou'])} | - | - | {p['seconds_per_image']} | {p['peak_rss_mb']} | - |")
    elif report.peer:
        lines += ["", f"Peer baseline skipped: {report.peer['skipped']}."]
    if report.per_class:
        names = [row["class"] for row in next(iter(report.per_class.values()))]
        lines += ["", "Per-class IoU:", "", "| mode | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for mode, rows in report.per_class.items():
            lines.append(f"| {mode} | " + " | ".join(_pct(r["iou"]) for r in rows) + " |")
    if report.selection_difference is not None:
        lines += ["", f"Whole-level minus per-window point selection: {100 * report.selection_difference:+.2f} mIoU points."]
    if report.scaling:
        lines += ["", "Scaling (MagNet, one synthetic scene at growing sizes):", "",
                  "| size | megapixels | windows | seconds | µs / pixel | peak RSS (MB) |", "|---|---|---|---|---|---|"]
        for r in report.scaling:
            lines.append(f"| {r['size']}² | {r['megapixels']} | {r['windows']} | {r['seconds']} | {r['us_per_pixel']} | {r['peak_rss_mb']} |")
    if report.limit:
        lim = report.limit
        lines += ["", f"Limit ({lim['image']}, {lim['windows']} windows): end to end {lim['end_to_end_s']} s, "
                  f"segmenter + refiner alone {lim['model_only_s']} s (ratio {lim['model_only_ratio']}, pipeline overhead "
                  f"{100 * lim['overhead_fraction']:.1f}%), segmenter alone {lim['segmenter_only_s']} s "
                  f"(ratio {lim['segmenter_only_ratio']})."]
    return "\n".join(lines) + "\n"


def write_plots(report: BenchmarkReport, output_dir: Path) -> list[str]:
    """mIoU vs seconds per image for each mode; peak memory and time vs pixels. PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    written = []
    if report.modes:
        figure, axes = plt.subplots(figsize=(6, 4.5), dpi=110)
        for row in report.modes:
            axes.scatter(row["seconds_per_image"], 100 * row["miou"], s=40)
            axes.annotate(row["mode"], (row["seconds_per_image"], 100 * row["miou"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if report.peer and "miou" in report.peer:
            axes.scatter(report.peer["seconds_per_image"], 100 * report.peer["miou"], marker="x", color="k")
            axes.annotate("monai", (report.peer["seconds_per_image"], 100 * report.peer["miou"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        axes.set_xlabel("seconds per image")
        axes.set_ylabel("mIoU (%)")
        axes.set_title(f"accuracy vs time ({report.images} images)")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        path = output_dir / "accuracy_vs_time.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(str(path))
    if report.scaling:
        figure, (memory, seconds) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
        pixels = [r["megapixels"] for r in report.scaling]
        memory.plot(pixels, [r["peak_rss_mb"] for r in report.scaling], "o-")
        memory.set_xscale("log")
        memory.set_ylim(bottom=0)
        memory.set_xlabel("image size (pixels, log scale)")
        memory.set_ylabel("peak RSS (MB)")
        memory.set_title("memory vs pixels")
        seconds.plot(pixels, [r["seconds"] for r in report.scaling], "o-")
        seconds.set_xscale("log")
        seconds.set_yscale("log")
        seconds.set_xlabel("image size (pixels, log scale)")
        seconds.set_ylabel("seconds")
        seconds.set_title("time vs pixels")
        for axes in (memory, seconds):
            axes.grid(alpha=0.3)
            axes.minorticks_off()
            axes.set_xticks(pixels, [f"{r['size']}²" for r in report.scaling])
        figure.tight_layout()
        path = output_dir / "scaling.png"
        figure.savefig(path)
        plt.close(figure)
        written.append(str(path))
    return written


def _worker(argv: list[str]) -> None:
    """Child-process entry points (`python -m magnet_cli.bench monai IMAGE OUT MODEL BATCH DEVICE`)."""
    if argv[:1] == ["monai"] and len(argv) == 6:
        image, output, model, batch, device = argv[1:]
        print(json.dumps(monai_segment(Path(image), Path(output), model or None, int(batch), device)))
        return
    raise SystemExit(f"usage: python -m magnet_cli.bench monai IMAGE OUT MODEL BATCH DEVICE (got {argv})")


if __name__ == "__main__":
    _worker(sys.argv[1:])
