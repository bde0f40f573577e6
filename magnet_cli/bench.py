"""The benchmark harness behind `magnet benchmark`: accuracy, speed and memory of every mode, in one run.

Each variant is an `InferenceSettings` object. Each segmentation calls the library's `segment` in a
fresh child process, so its peak RSS is its own (freed memory of one run never hides in the next) and a
crash of one run is reported, not fatal. Its mask is then scored with `evaluate_pair` in this process.
Four measurements:

- modes: mIoU, boundary F, seconds per image, peak memory and windows of each variant (the paper's
  table: downsample, patch, MagNet-Fast, MagNet, plus point-selection variants);
- scaling: time and peak memory of MagNet on the same synthetic scene at growing sizes;
- limit: the same windows through the segmenter (and refiner) alone, on tensors in memory, vs end to
  end: how close the pipeline gets to pure model compute;
- peer: MONAI's sliding_window_inference with the same segmenter, when MONAI is installed;
- background: MagNet on a slide-like scene (tissue on blank glass, `magnet synth --blank`) with
  `--background none` and `auto`, and on the same scene without glass: the time blank regions save and
  whether the labels on tissue stay the same.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from magnet_cli.errors import MagnetError, UsageError
from magnet_cli.evaluation import IGNORE_INDEX, Scores, evaluate_pair
from magnet_cli.io.folders import make_output_folder
from magnet_cli.settings import InferenceSettings, ModelSettings, RunSettings, with_values

if TYPE_CHECKING:
    from magnet_cli.models.bundle import ModelBundle

PAPER_POINTS = 65536  # the paper's k (2^16 points per level)
# The fields that make a variant's method; every other inference field (batch size, device, ...) is the
# caller's, the same for every variant.
METHOD_FIELDS = ("mode", "selection", "points", "fast_patches", "fast_levels")
# Fields a variant may also set; only a variant that sets them (away from the default) overrides the caller's.
OPTIONAL_METHOD_FIELDS = ("precision",)


@dataclass(frozen=True)
class Variant:
    """One way of running `segment`: a name, the settings of its method, and what it stands for."""

    name: str
    settings: InferenceSettings
    description: str = ""

    def run_with(self, base: InferenceSettings) -> InferenceSettings:
        """This variant's method, run the way `base` says (batch size, device, ...)."""
        method = {name: getattr(self.settings, name) for name in METHOD_FIELDS}
        default = InferenceSettings()
        method.update({name: getattr(self.settings, name) for name in OPTIONAL_METHOD_FIELDS
                       if getattr(self.settings, name) != getattr(default, name)})
        return with_values(base, **method)


def _variant(name: str, description: str, **method: Any) -> Variant:
    return Variant(name, InferenceSettings(**method), description)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _variant("downsample", "coarsest level only, upsampled", mode="downsample"),
        _variant("patch", "finest level only, no context", mode="patch"),
        _variant("fast", "MagNet-Fast: coarse levels in full, the most uncertain of the finest level's windows "
                 "(streaming, the defaults)", mode="fast"),
        _variant("fast-all-levels", "MagNet-Fast choosing about half of every level's windows (streaming)", mode="fast",
                 fast_patches=0.5, fast_levels="all"),
        _variant("fast-3", "MagNet-Fast: about the 3 most uncertain windows per level (streaming)", mode="fast",
                 fast_patches=3, fast_levels="all"),
        _variant("fast-global", "MagNet-Fast ranked on whole level maps, 3 windows per level (the reference's)",
                 mode="fast", selection="global", fast_patches=3, fast_levels="all"),
        _variant("magnet", "MagNet, points selected per window (streaming)", mode="magnet"),
        _variant("magnet-global", "MagNet, points selected over the whole level", mode="magnet", selection="global"),
        _variant("magnet-points-0.75", "MagNet, refiner output taken at the 75% of points with the highest score "
                 "(the default bundle's setting until session 9)", mode="magnet", points=0.75),
        _variant("magnet-paper-k", "MagNet, the paper's k = 2^16 points per level", mode="magnet", points=PAPER_POINTS),
        _variant("magnet-bf16", "MagNet with bf16 model calls (emulated on CPUs without bf16)", mode="magnet",
                 precision="bf16"),
        # `auto` takes bf16 where the device computes it natively: this row keeps fp32 in every table.
        _variant("magnet-fp32", "MagNet with fp32 model calls", mode="magnet", precision="fp32"),
    )
}
QUICK = {"data": "synth:9100:2:1024", "sizes": (512, 1024, 2048), "slide_size": 2048}
FULL = {"data": "synth:9000:4:4096", "sizes": (2048, 4096, 8192, 16384), "slide_size": 4096}
SCALING_SEED = 9500
SLIDE_SEED = 9000  # a held-out seed; its tissue section lies in the top-left 2048^2 too
SLIDE_BLANK = 0.75  # the share of blank glass the issue measures
# (without glass, `auto`) pairs run back to back for the time ratio, which the report takes the median of:
# one run of each moved the ratio across the issue's 0.45 between benchmark runs on a shared VM.
SLIDE_PAIRS = 3


# --- the library calls, one place each ----------------------------------------------------------------
def load_model(model: ModelSettings) -> ModelBundle:
    """The bundle `model` names (the bundled default when it names none)."""
    from magnet_cli.segmentation import resolve_model

    return resolve_model(model)


def make_engine(bundle: ModelBundle, inference: InferenceSettings) -> Any:
    """The inference engine of `bundle` run as `inference` says."""
    from magnet_cli.pipeline import Engine

    return Engine(bundle, inference)


def segment_image(
    image: Path, output: Path, model: ModelSettings | ModelBundle, inference: InferenceSettings, cluster: str | None = None
) -> dict:
    """One image through the library's `segment`, quietly, replacing `output`; its result as a dict.
    `model` is settings (a child process loads the model itself) or an already loaded bundle; `cluster`
    runs its units on Dask workers (`--cluster`)."""
    from magnet_cli.segmentation import segment

    run = RunSettings(progress=False, overwrite=True, cluster=cluster)
    (result,) = segment([image], output, model=model, inference=inference, run=run)
    return result.to_dict()


# --- measured child processes -------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    """What a function returned in its child process, the child's wall time and its own peak RSS."""

    value: Any
    wall_seconds: float
    peak_rss_mb: float


def own_peak_rss_mb() -> float:
    """This process's peak resident memory so far, never its parent's nor a child's.

    On Linux the high-water mark of this process's own address space (VmHWM): `ru_maxrss` carries the
    parent's RSS at fork over the exec that starts a spawned child (Linux keeps rusage across execve),
    so a measured child would report at least what the benchmark process held. RUSAGE_SELF elsewhere.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_measured(what: str, function: Callable[..., Any], *args: Any) -> Measured:
    """`function(*args)` in a fresh child process. A user error there comes back as the same MagnetError
    class, prefixed with `what`; a bug as ChildProcessError (the child printed its traceback)."""
    # "spawn", not fork: a forked child starts with a copy of this process's pages, so its peak would
    # include our own (the loaded model, earlier scores), and CUDA cannot run in a child forked after
    # the parent used it. Spawn is a fresh interpreter, like `python -c`, but the arguments travel as
    # pickled objects (settings, paths), never as argument text, and errors come back typed.
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_measure_in_child, args=(sender, function, args), name=f"magnet-bench: {what}")
    start = time.perf_counter()
    child.start()
    sender.close()  # the child now holds the only sending end: if it dies, recv() ends with EOFError
    try:
        outcome = _receive(receiver)
        child.join()
    finally:
        receiver.close()
        if child.is_alive():  # interrupted (Ctrl-C) while the child still runs
            child.terminate()
            child.join()
    wall = time.perf_counter() - start
    if outcome is None:
        raise MagnetError(f"{what} failed: {_death(child.exitcode)}")
    status, value, peak = outcome
    if status == "user":
        kind, message = value
        raise kind(f"{what}: {message}")
    if status == "bug":
        raise ChildProcessError(f"{what}: {value} (traceback above)")
    return Measured(value, wall, peak)


def _receive(receiver: Any) -> tuple | None:
    try:
        return receiver.recv()
    except EOFError:  # the child died before it could answer
        return None


def _measure_in_child(sender: Any, function: Callable[..., Any], args: tuple) -> None:
    """The child's side of `run_measured`: call, then send (status, value, own peak RSS in MB)."""
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the parent's stdout may carry --json: keep it clean
    try:
        outcome: tuple = ("ok", function(*args))
    except MagnetError as error:
        outcome = ("user", (type(error), str(error)))
    except Exception as error:  # a bug: its traceback goes to stderr, the parent raises
        traceback.print_exc()
        outcome = ("bug", f"{type(error).__name__}: {error}")
    sender.send((*outcome, own_peak_rss_mb()))
    sender.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the process was killed by signal {-exitcode}" + (" (out of memory?)" if exitcode == -9 else "")
    return f"the process exited with code {exitcode} without a result"


def run_segment(
    image: Path, output: Path, model: ModelSettings, inference: InferenceSettings, label: str, cluster: str | None = None
) -> dict:
    """One measured `segment` run in its own process: the image's result plus wall time and peak RSS (of
    that process: Dask workers are other processes)."""
    run = run_measured(f"segment {image.name} ({label})", segment_image, image, output, model, inference, cluster)
    return {**run.value, "wall_seconds": run.wall_seconds, "peak_rss_mb": run.peak_rss_mb}


# --- arguments, checked before any work ---------------------------------------------------------------
def check_modes(modes: Sequence[str] | None) -> list[str]:
    """Variant names, each known and given once; None means every variant."""
    if modes is None:
        return list(VARIANTS)
    if isinstance(modes, str):
        raise TypeError("modes: expected a list of variant names, not one string")
    names = list(modes)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise UsageError(f"--modes {','.join(unknown)}: unknown; expected some of {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--modes {','.join(names)}: give each mode once")
    return names


def check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """Scaling sizes: whole, positive numbers of pixels that a synthetic scene can have."""
    from magnet_cli.synthetic import MAX_SIDE

    values = tuple(sizes)
    bad = [s for s in values if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= MAX_SIDE]
    if bad:
        raise UsageError(f"--sizes {','.join(map(str, bad))}: each size must be a whole number from 1 to {MAX_SIDE}")
    return tuple(int(s) for s in values)


def check_inference(inference: InferenceSettings) -> InferenceSettings:
    """The settings every variant shares; the method fields are each variant's, so setting them here
    would be silently overridden: refused instead."""
    default = InferenceSettings()
    fixed = [name for name in METHOD_FIELDS if getattr(inference, name) != getattr(default, name)]
    if fixed:
        raise UsageError(f"benchmark: {', '.join(fixed)} are set by each of --modes, not by the shared inference settings")
    return inference


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


def render_scenes(folder: Path, seed: int, count: int, size: int, progress: bool, blank: float = 0.0) -> list[tuple[Path, Path]]:
    """Synth scenes as tiled pyramidal TIFFs (slide-like with `blank` > 0), rendered unless already there."""
    from magnet_cli.synthetic import scene_name, synth

    pairs = [(folder / "images" / f"{scene_name(seed, i)}.tif", folder / "masks" / f"{scene_name(seed, i)}.tif") for i in range(count)]
    if not all(image.exists() and mask.exists() for image, mask in pairs):
        synth(folder, size=size, seed=seed, count=count, format="tiff", blank=blank,
              run=RunSettings(overwrite=True, progress=progress))
    return pairs


# --- blank regions skipped ----------------------------------------------------------------------------
def measure_background(size: int, model: ModelSettings, inference: InferenceSettings, scratch: Path, classes: list,
                       ignore_index: int, progress: bool) -> dict:
    """MagNet on the slide-like scene with `--background none` and `auto`, and on the same scene without
    glass; each run in its own measured process. Glass is masked `ignore_index` in the truth, so mIoU is
    the tissue's. The scene without glass and `auto` run as SLIDE_PAIRS back-to-back pairs, so both see
    the same phase of a shared machine: their seconds are the medians, `auto_vs_plain` the median of the
    pairs' ratios; `none` runs once (its labels are the reference on tissue)."""
    from magnet_cli.synthetic import IGNORE_VALUE

    (slide,) = render_scenes(scratch / f"slide_{SLIDE_SEED}_{size}", SLIDE_SEED, 1, size, progress, blank=SLIDE_BLANK)
    (plain,) = render_scenes(scratch / f"synth_{SLIDE_SEED}_1_{size}", SLIDE_SEED, 1, size, progress)
    magnet = VARIANTS["magnet"].run_with(inference)
    cases = {"plain": (plain, "none"), "none": (slide, "none"), "auto": (slide, "auto")}
    order = ["none"] + ["plain", "auto"] * max(1, SLIDE_PAIRS)
    timed: dict[str, list[dict]] = {name: [] for name in cases}
    masks = {name: scratch / "slide" / f"{name}.zarr" for name in cases}
    for name in order:
        (image, _), background = cases[name]
        timed[name].append(run_segment(image, masks[name], model, with_values(magnet, background=background),
                                       f"magnet --background {background}"))
    scores = {name: evaluate_pair(masks[name], cases[name][0][1], classes, ignore_index=ignore_index).miou for name in cases}
    runs = {name: done[0] for name, done in timed.items()}
    tissue, equal, nodata_on_tissue = _tissue_agreement(masks["none"], masks["auto"], slide[1], IGNORE_VALUE, runs["auto"].get("nodata"))
    seconds = {name: statistics.median(run["seconds"] for run in done) for name, done in timed.items()}
    pair_seconds = [(p["seconds"], a["seconds"]) for p, a in zip(timed["plain"], timed["auto"])]
    return {
        "size": size,
        "seed": SLIDE_SEED,
        "blank_share": round(1 - tissue / (size * size), 4),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "windows": {name: run["windows"] for name, run in runs.items()},
        "peak_rss_mb": {name: round(max(run["peak_rss_mb"] for run in timed[name]), 1) for name in cases},
        "miou": {name: round(value, 5) for name, value in scores.items()},
        "nodata_share": round(runs["auto"].get("nodata_pixels", 0) / (size * size), 4),
        "auto_vs_plain": round(statistics.median(a / max(p, 1e-9) for p, a in pair_seconds), 3),
        "auto_vs_none": round(seconds["auto"] / max(seconds["none"], 1e-9), 3),
        "pairs_s": [[round(p, 3), round(a, 3)] for p, a in pair_seconds],  # (without glass, auto), in run order
        "tissue_labels_equal": round(equal / max(tissue, 1), 6),
        "tissue_pixels_written_as_nodata": nodata_on_tissue,
    }


def _tissue_agreement(first: Path, second: Path, truth: Path, glass: int, nodata: int | None) -> tuple[int, int, int]:
    """(tissue pixels, those labelled the same in both masks, those the second wrote as no data), read in
    row bands so memory stays flat at any size."""
    from magnet_cli.io.open import open_image

    tissue = equal = nodata_on_tissue = 0
    with open_image(first) as a, open_image(second) as b, open_image(truth) as t:
        for y0 in range(0, t.height, 1024):
            y1 = min(t.height, y0 + 1024)
            la, lb, lt = (np.asarray(s.read_level(0, y0, 0, y1, t.width)).reshape(y1 - y0, t.width) for s in (a, b, t))
            on_tissue = lt != glass
            tissue += int(on_tissue.sum())
            equal += int((on_tissue & (la == lb)).sum())
            if nodata is not None:
                nodata_on_tissue += int((on_tissue & (lb == nodata)).sum())
    return tissue, equal, nodata_on_tissue


# --- the model-only limit ---------------------------------------------------------------------------
def model_only_seconds(engine, windows_per_level: Sequence[int], batch_size: int, refine: bool) -> float:
    """The segmenter (and the refiner below the root level) on in-memory tensors, batch by batch, for
    the given numbers of windows: the time of pure model compute for a run."""
    from magnet_cli.pipeline import RunStats

    h, w = engine.input_size
    c = engine.bundle.num_classes
    stats = RunStats()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, engine.bundle.segmenter.input_channels, h, w, generator=generator)
    maps = torch.rand(batch_size, c, h, w, generator=generator).softmax(1)
    maps = maps.to(engine.device)
    start = time.perf_counter()
    with engine.timed(stats):  # on CUDA: waits for the queued calls once, at the end
        for level, count in enumerate(windows_per_level):
            for first in range(0, count, batch_size):
                n = min(batch_size, count - first)
                fine = engine.segment_windows(images[:n], stats)
                if refine and level > 0:
                    engine.propose_refinement(maps[:n], fine, stats)
    return time.perf_counter() - start


LIMIT_REPEATS = 3  # interleaved (end to end, models alone) pairs; the report takes their medians


def measure_limit(image: Path, model: ModelSettings | ModelBundle, inference: InferenceSettings, workdir: Path,
                  repeats: int = LIMIT_REPEATS) -> dict:
    """End-to-end MagNet on one image (in this process, as a user's script would call it) vs the same
    windows through the models alone. `model`: settings, or an already loaded bundle; `inference`: batch
    size, device and the rest, with MagNet's method. Each repeat times one of each back to back, so the
    two see the same phase of a shared machine (whose speed moves by more than the overhead between
    runs); the figures are the medians of the repeats, the pipeline overhead that of each pair's."""
    bundle = load_model(model) if isinstance(model, ModelSettings) else model
    settings = VARIANTS["magnet"].run_with(inference)
    engine = make_engine(bundle, settings)
    batch_size = engine.batch_size
    model_only_seconds(engine, [2, 2], batch_size, True)  # warm-up: oneDNN / cuDNN primitive caches
    pairs: list[tuple[float, float]] = []
    for _ in range(max(1, repeats)):
        shutil.rmtree(workdir / "limit.zarr", ignore_errors=True)
        start = time.perf_counter()
        result = segment_image(image, workdir / "limit.zarr", bundle, settings)
        end_to_end = time.perf_counter() - start
        pairs.append((end_to_end, model_only_seconds(engine, result["windows_per_level"], batch_size, True)))
    segmenter = model_only_seconds(engine, result["windows_per_level"], batch_size, False)
    end_to_end = statistics.median(e for e, _ in pairs)
    models = statistics.median(m for _, m in pairs)
    return {
        "image": image.name,
        "windows": result["windows"],
        "repeats": len(pairs),
        "end_to_end_s": round(end_to_end, 2),
        "model_only_s": round(models, 2),
        "segmenter_only_s": round(segmenter, 2),
        "model_only_ratio": round(models / end_to_end, 3),
        "segmenter_only_ratio": round(segmenter / end_to_end, 3),
        # The issue's measure: what the pipeline adds, as a share of the models' own time.
        "overhead_of_model_time": round(statistics.median(e / m - 1 for e, m in pairs), 3),
        "overhead_fraction": round(statistics.median(1 - m / e for e, m in pairs), 3),  # share of end to end
        "pairs_s": [[round(e, 4), round(m, 4)] for e, m in pairs],  # enough digits to recompute the ratios of short runs
    }


# --- the peer baseline ------------------------------------------------------------------------------
PEER_NAME = "monai sliding_window_inference"


def monai_available() -> bool:
    try:
        import monai.inferers  # noqa: F401
    except ImportError:
        return False
    return True


def monai_segment(image: Path, output: Path, model: ModelSettings, inference: InferenceSettings) -> dict:
    """MONAI's sliding_window_inference with our segmenter: the whole image in memory, non-overlapping
    windows of the model's input size at full resolution (our `patch` mode's windows), argmax written
    as a TIFF mask. Runs in a child process of `run_measured`."""
    import tifffile
    from monai.inferers import sliding_window_inference

    from magnet_cli.devices import auto_batch_size, resolve_device
    from magnet_cli.io.base import to_model_input
    from magnet_cli.io.open import open_image
    from magnet_cli.io.value_range import normalization_for
    from magnet_cli.segmentation import with_bundle_reading

    bundle = load_model(model)
    reading = with_bundle_reading(inference, bundle)  # the pixels `segment` gives the model
    torch_device = resolve_device(inference.device)
    segmenter = bundle.segmenter.to(torch_device)
    start = time.perf_counter()
    with open_image(image) as source:
        pixels = source.read_level(0, 0, 0, source.height, source.width)
        normalization = normalization_for(source, reading.bands, reading.value_range, bundle.value_range,
                                          segmenter.input_channels)
        whole = to_model_input(pixels, normalization, image)[None]
    with torch.inference_mode():
        probabilities = sliding_window_inference(
            whole, roi_size=bundle.input_size, sw_batch_size=inference.batch_size or auto_batch_size(torch_device), overlap=0.0,
            predictor=lambda x: segmenter.probabilities(x.to(torch_device)).cpu(),
        )
    labels = probabilities[0].argmax(0).to(torch.uint8).numpy()
    tifffile.imwrite(output, labels, tile=(512, 512), compression="zlib")
    return {"seconds": round(time.perf_counter() - start, 3)}


# --- the whole benchmark ----------------------------------------------------------------------------
@dataclass
class BenchmarkReport:
    machine: str
    model: str
    data: str | None  # None: no modes were run, so no dataset was read
    images: int
    modes: list[dict] = field(default_factory=list)
    per_class: dict[str, list[dict]] = field(default_factory=dict)
    scaling: list[dict] = field(default_factory=list)
    limit: dict | None = None
    peer: dict | None = None
    background: dict | None = None
    selection_difference: float | None = None
    plots: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def _quiet(message: str) -> None:
    """The default `log`: say nothing."""


def benchmark(
    data: str | Path | None,
    output: str | Path,
    *,
    model: ModelSettings | None = None,
    modes: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    inference: InferenceSettings | None = None,
    quick: bool = False,
    peer: bool = True,
    limit: bool = True,
    slide_size: int | None = None,
    workdir: str | Path | None = None,
    run: RunSettings | None = None,
    ignore_index: int = IGNORE_INDEX,
    log: Callable[[str], None] = _quiet,
) -> BenchmarkReport:
    """Run the modes on images + masks (or synth scenes), the scaling series, the limit and the peer;
    write benchmark.json, benchmark.md and PNG plots into `output`.

    `data` None: the preset's synth scenes. `modes` None: every variant; empty: no modes table, and then
    the dataset is not read at all (nor the limit and peer, which run on it). `sizes` None: the preset's.
    `inference` gives what every variant shares (batch size, device, ...). `slide_size`: the side of the
    slide-like scene measured with and without `--background auto` when modes run (None: the preset's; 0: skipped). `run.progress` shows bars
    while scenes render; `run.cluster` runs the scaling series on Dask workers (throughput against
    workers: run it with local:1, local:2, ...); overwrite and resume do not apply (the benchmark always replaces its own report
    and scratch masks, and reuses scenes already rendered).
    """
    from magnet_cli.devices import resolve_device

    started = time.perf_counter()
    preset = QUICK if quick else FULL
    names = check_modes(modes)
    sizes = check_sizes(preset["sizes"] if sizes is None else sizes)
    slide_size = preset["slide_size"] if slide_size is None else slide_size
    if slide_size:
        check_sizes([slide_size])
    inference = check_inference(inference or InferenceSettings())
    model = model or ModelSettings()
    progress = (run or RunSettings()).progress
    cluster = (run or RunSettings()).cluster
    device = resolve_device(inference.device)  # a missing CUDA device is named before any work
    bundle = load_model(model)
    output = make_output_folder(Path(output), "--output")
    scratch = make_output_folder(Path(workdir) if workdir is not None else output / "work", "--workdir")
    classes = bundle.classes

    data = (data if data is not None else preset["data"]) if names else None
    pairs = dataset_pairs(data, scratch, classes, progress) if data is not None else []
    report = BenchmarkReport(machine_description(device), bundle.name, None if data is None else str(data), len(pairs))
    totals: dict[str, Scores] = {}
    for name in names:
        variant = VARIANTS[name]
        settings = variant.run_with(inference)
        totals[name], runs = Scores.empty(classes), []
        for image, truth in pairs:
            mask = scratch / "masks" / name / f"{image.stem}.zarr"
            one = run_segment(image, mask, model, settings, name)
            totals[name].add(evaluate_pair(mask, truth, classes, ignore_index=ignore_index))
            runs.append(one)
            log(f"{name:18s} {image.name}: {one['seconds']:.1f} s, {one['peak_rss_mb']:.0f} MB")
        report.modes.append(_mode_row(variant, totals[name], runs))
        report.per_class[name] = totals[name].to_dict()["per_class"]
    if "magnet" in totals and "magnet-global" in totals:
        report.selection_difference = round(totals["magnet-global"].miou - totals["magnet"].miou, 5)

    if peer and pairs:
        report.peer = run_peer(pairs, scratch, model, inference, classes, ignore_index)

    magnet = VARIANTS["magnet"].run_with(inference)
    for size in sizes:
        (image, _), = render_scenes(scratch / f"scaling_{size}", SCALING_SEED, 1, size, progress)
        one = run_segment(image, scratch / "scaling" / f"{size}.zarr", model, magnet, "magnet", cluster)
        report.scaling.append({
            "size": size,
            "cluster": cluster,
            "megapixels": round(size * size / 1e6, 2),
            "windows": one["windows"],
            "seconds": one["seconds"],
            "us_per_pixel": round(one["seconds"] / (size * size) * 1e6, 3),
            "peak_rss_mb": round(one["peak_rss_mb"], 1),
            "peak_gpu_mb": one.get("peak_gpu_mb"),
        })
        log(f"scaling {size}^2: {one['seconds']:.1f} s, {one['peak_rss_mb']:.0f} MB")

    if limit and pairs:
        report.limit = measure_limit(pairs[0][0], bundle, inference, scratch)
    if slide_size and names:
        report.background = measure_background(slide_size, model, inference, scratch, classes, ignore_index, progress)
        log(f"slide-like {slide_size}^2: auto {report.background['seconds']['auto']:.1f} s, "
            f"none {report.background['seconds']['none']:.1f} s")
    report.seconds = round(time.perf_counter() - started, 1)
    report.plots = write_plots(report, output)
    (output / "benchmark.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (output / "benchmark.md").write_text(markdown(report))
    return report


def run_peer(pairs: list[tuple[Path, Path]], scratch: Path, model: ModelSettings, inference: InferenceSettings,
             classes: list, ignore_index: int) -> dict:
    """The peer baseline's row: MONAI on every image, each in its own measured process."""
    if not monai_available():
        return {"name": PEER_NAME, "skipped": "MONAI is not installed (pip install 'magnet-cli[peer]')"}
    scores, runs = Scores.empty(classes), []
    for image, truth in pairs:
        mask = scratch / "masks" / "monai" / f"{image.stem}.tif"
        mask.parent.mkdir(parents=True, exist_ok=True)
        runs.append(run_measured(f"{PEER_NAME} on {image.name}", monai_segment, image, mask, model, inference))
        scores.add(evaluate_pair(mask, truth, classes, ignore_index=ignore_index))
    return {
        "name": PEER_NAME,
        "miou": round(scores.miou, 5),
        "seconds_per_image": round(float(np.mean([r.value["seconds"] for r in runs])), 2),
        "peak_rss_mb": round(max(r.peak_rss_mb for r in runs), 1),
    }


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
        # Segmented and refined: MagNet-Fast's chosen windows (the rest of those walked keep their coarse map)
        "refined_per_image": round(float(np.mean([sum(r.get("refined_per_level") or [r["windows"]]) for r in runs])), 1),
        "windows_per_second": round(sum(r["windows"] for r in runs) / max(sum(r["seconds"] for r in runs), 1e-9), 1),
        # Model calls and point selection over wall time: on CUDA from events on the stream (the share the
        # GPU had work queued), on CPU from the host clock.
        "device_busy": round(
            sum(r.get("segmenter_seconds", 0) + r.get("refiner_seconds", 0) + r.get("selection_seconds", 0) for r in runs)
            / max(sum(r["seconds"] for r in runs), 1e-9), 3),
        "precision": runs[0].get("precision") if runs else None,
    }


# --- reports ----------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown(report: BenchmarkReport) -> str:
    """The report as Markdown tables (what benchmarks/README.md quotes)."""
    data = f"Data: {report.data} ({report.images} images)" if report.data is not None else "No dataset (no modes)"
    lines = [f"Machine: {report.machine}. Model: {report.model}. {data}. Benchmark time: {report.seconds:.0f} s."]
    if report.modes:
        lines += [
            "",
            "| mode | mIoU | boundary F | pixel acc. | s / image | peak RSS (MB) | peak GPU (MB) | windows / image "
            "| refined / image | windows / s | model busy % | precision |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for row in report.modes:
        lines.append(
            f"| {row['mode']} | {_pct(row['miou'])} | {_pct(row['boundary_f'])} | {_pct(row['pixel_accuracy'])} | "
            f"{row['seconds_per_image']} | {row['peak_rss_mb']} | {row['peak_gpu_mb'] or '-'} | {row['windows_per_image']} | "
            f"{row.get('refined_per_image', '-')} | {row.get('windows_per_second', '-')} | {_pct(row.get('device_busy'))} | {row.get('precision') or '-'} |"
        )
    if report.peer and "miou" in report.peer:
        p = report.peer
        lines.append(f"| {p['name']} (peer) | {_pct(p['miou'])} | - | - | {p['seconds_per_image']} | {p['peak_rss_mb']} "
                     "| - | - | - | - | - |")
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
        where = f" on Dask workers (--cluster {report.scaling[0]['cluster']}; peak RSS is the driver's)" if report.scaling[0].get("cluster") else ""
        lines += ["", f"Scaling (MagNet, one synthetic scene at growing sizes){where}:", "",
                  "| size | megapixels | windows | seconds | µs / pixel | peak RSS (MB) |", "|---|---|---|---|---|---|"]
        for r in report.scaling:
            lines.append(f"| {r['size']}² | {r['megapixels']} | {r['windows']} | {r['seconds']} | {r['us_per_pixel']} | {r['peak_rss_mb']} |")
    if report.limit:
        lim = report.limit
        lines += ["", f"Limit ({lim['image']}, {lim['windows']} windows, median of {lim['repeats']} interleaved runs): "
                  f"end to end {lim['end_to_end_s']} s, segmenter + refiner alone {lim['model_only_s']} s: pipeline "
                  f"overhead {100 * lim['overhead_of_model_time']:.1f}% of model time ({100 * lim['overhead_fraction']:.1f}% "
                  f"of end to end); segmenter alone {lim['segmenter_only_s']} s (ratio {lim['segmenter_only_ratio']})."]
    if report.background:
        lines += _background_lines(report.background)
    return "\n".join(lines) + "\n"


def _background_lines(bg: dict) -> list[str]:
    runs = (("plain", "the same scene without glass, `--background none`"), ("none", "slide-like, `--background none`"),
            ("auto", "slide-like, `--background auto`"))
    pairs = len(bg.get("pairs_s", [])) or 1
    lines = ["", f"Blank regions (MagNet, slide-like scene seed {bg['seed']}, {bg['size']}², {100 * bg['blank_share']:.1f}% "
             f"glass; mIoU on tissue; seconds: the median of {pairs} back-to-back runs without glass and `auto`, one "
             "of `none`):", "", "| run | seconds | windows | peak RSS (MB) | mIoU |", "|---|---|---|---|---|"]
    for name, label in runs:
        lines.append(f"| {label} | {bg['seconds'][name]} | {bg['windows'][name]} | {bg['peak_rss_mb'][name]} | {_pct(bg['miou'][name])} |")
    ratios = ", ".join(f"{a / p:.3f}" for p, a in bg.get("pairs_s", []))
    pairs_note = f" (median of the pairs: {ratios})" if ratios else ""
    lines += ["", f"`auto` took {bg['auto_vs_plain']}x the time of the scene without glass{pairs_note} and "
              f"{bg['auto_vs_none']}x that of `none`; it wrote {100 * bg['nodata_share']:.1f}% of the pixels as no data; "
              f"labels on tissue identical to `none`: {100 * bg['tissue_labels_equal']:.4f}% "
              f"({bg['tissue_pixels_written_as_nodata']} tissue pixels written as no data)."]
    return lines


def pareto_front(rows: Sequence[dict]) -> list[dict]:
    """The modes no other mode beats on both time and mIoU, fastest first."""
    front: list[dict] = []
    for row in sorted(rows, key=lambda r: (r["seconds_per_image"], -r["miou"])):
        if not front or row["miou"] > front[-1]["miou"]:
            front.append(row)
    return front


LABEL_POINTS = 8  # font size of the chart's mode labels


def label_offsets(anchors: Sequence[tuple[float, float]], labels: Sequence[str], size: float) -> list[tuple[float, float]]:
    """Offsets (in points, y up) that keep each label's box clear of those placed before it: labels of
    modes with about the same time and mIoU (magnet, magnet-global, magnet-bf16, ...) were drawn on top of
    one another. `anchors`: the points, in points on the figure; boxes are estimated from the label's
    length at font `size`. Tries right of the point, stepping down and up, and keeps the first clear one
    (the first, right of the point, if none is)."""
    height = 1.25 * size
    candidates = [(5.0, 4.0 + step * height * sign) for step in range(8) for sign in ((1,) if step == 0 else (-1, 1))]
    placed: list[tuple[float, float, float, float]] = []
    offsets = []
    for (x, y), label in zip(anchors, labels):
        width = 0.6 * size * len(label)
        chosen = candidates[0]
        for dx, dy in candidates:
            box = (x + dx, y + dy, x + dx + width, y + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                chosen = (dx, dy)
                break
        dx, dy = chosen
        placed.append((x + dx, y + dy, x + dx + width, y + dy + height))
        offsets.append(chosen)
    return offsets


def write_plots(report: BenchmarkReport, output_dir: Path) -> list[str]:
    """mIoU vs seconds per image for each mode; peak memory and time vs pixels. PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    written = []
    if report.modes:
        figure, axes = plt.subplots(figsize=(6, 4.5), dpi=110)
        front = pareto_front(report.modes)
        axes.plot([r["seconds_per_image"] for r in front], [100 * r["miou"] for r in front], "-", color="0.6",
                  zorder=0, label="Pareto front")
        points = [(row["mode"], row["seconds_per_image"], 100 * row["miou"]) for row in report.modes]
        for _, x, y in points:
            axes.scatter(x, y, s=40)
        if report.peer and "miou" in report.peer:
            points.append(("monai", report.peer["seconds_per_image"], 100 * report.peer["miou"]))
            axes.scatter(points[-1][1], points[-1][2], marker="x", color="k")
        axes.autoscale_view()
        anchors = axes.transData.transform([(x, y) for _, x, y in points])
        scale = figure.dpi / 72  # offset points -> pixels
        offsets = label_offsets([tuple(a / scale) for a in anchors], [name for name, _, _ in points], LABEL_POINTS)
        for (name, x, y), offset in zip(points, offsets):
            axes.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=LABEL_POINTS)
        axes.legend(loc="lower right", fontsize=8)
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
