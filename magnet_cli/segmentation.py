"""`segment`: images in, OME-Zarr label images out. The library function behind `magnet segment`."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from magnet_cli.classes import parse_classes
from magnet_cli.errors import InputError, MagnetWarning, ModelError, OutputError, UsageError
from magnet_cli.io.background import BackgroundWriter
from magnet_cli.io.folders import make_output_folder
from magnet_cli.io.base import Box, ImageSource, PixelNormalization
from magnet_cli.io.geotiff import write_geotiff
from magnet_cli.io.labels import LabelWriter
from magnet_cli.io.open import list_images, open_image
from magnet_cli.io.preview import write_preview
from magnet_cli.io.pyramid_cache import ensure_pyramid
from magnet_cli.io.zarr_source import is_zarr_dir
from magnet_cli.models.bundle import ModelBundle, bundle_from_parts, load_bundle, pairing_warning
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine, RunStats, plan_for, windows_per_level
from magnet_cli.pyramid import ScalePlan
from magnet_cli.progress import LevelProgress, progress_enabled
from magnet_cli.refine import class_labels, uncertainty as uncertainty_of
from magnet_cli.runtime import one_intra_op_thread
from magnet_cli.settings import InferenceSettings, ModelSettings, OutputSettings, RunSettings

OUTPUT_SUFFIX = ".zarr"
PREVIEW_SUFFIXES = (".png",)
GEOTIFF_SUFFIXES = (".tif", ".tiff")
# An -o with one of these names another format: writing a Zarr folder under that name would mislead.
OTHER_FORMAT_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".geojson", ".gpkg", ".shp", ".json", ".h5", ".npy")


@dataclass
class SegmentResult:
    """What one image's run produced; `magnet segment --json` prints a list of these."""

    input: str
    output: str
    height: int
    width: int
    mode: str
    levels: int
    windows: int
    windows_per_level: list[int]
    seconds: float
    segmenter_seconds: float
    refiner_seconds: float
    read_wait_seconds: float
    device: str
    preview: str | None = None
    geotiff: str | None = None
    class_pixels: dict[str, int] = field(default_factory=dict)
    peak_gpu_mb: float | None = None  # torch's max allocated memory on a CUDA device during this image

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model(settings: ModelSettings | None = None) -> ModelBundle:
    """A bundle (--model, else the bundled default), or a bring-your-own segmenter with its contract."""
    settings = settings or ModelSettings()
    class_list = parse_classes(settings.classes) if settings.classes is not None else None
    order = settings.refiner_input_order.value if settings.refiner_input_order is not None else None
    if settings.segmenter is not None:
        if settings.input_size is None:
            raise UsageError("--segmenter needs --input-size HxW (the size the model was trained at)")
        return bundle_from_parts(
            settings.segmenter, class_list, settings.input_size, settings.refiner,
            mean=settings.mean, std=settings.std, refiner_input_order=order,  # type: ignore[arg-type]
            trust_model=settings.trust_model,
        )
    directory = settings.model if settings.model is not None else default_model_dir()
    bundle = load_bundle(directory, trust_model=settings.trust_model)
    if settings.refiner is not None:
        from magnet_cli.models.refiner import load_refiner

        bundle.refiner = load_refiner(settings.refiner, order, bundle.num_classes)  # type: ignore[arg-type]
    if class_list is not None:
        if len(class_list) != bundle.num_classes:
            raise ModelError(f"--classes gives {len(class_list)} classes but {directory} has {bundle.num_classes}")
        bundle.classes = class_list
    if settings.input_size is not None and tuple(settings.input_size) != tuple(bundle.input_size):
        raise UsageError(
            f"--input-size {settings.input_size[0]}x{settings.input_size[1]}: {directory} was trained at "
            f"{bundle.input_size[0]}x{bundle.input_size[1]}; --input-size goes with --segmenter"
        )
    if settings.mean is not None:
        bundle.segmenter.mean, bundle.segmenter.std = settings.mean, settings.std  # type: ignore[assignment]
    return bundle


def expand_inputs(inputs: Sequence[Path | str]) -> list[Path]:
    """Files as given; a folder stands for every image in it."""
    if not inputs:
        raise UsageError("no input given")
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not is_zarr_dir(path):
            found = list_images(path)
            if not found:
                raise InputError(f"{path}: folder holds no supported image")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise InputError(f"{path}: no such file")
    return paths


def output_paths(inputs: list[Path], output: Path, multiple: bool) -> list[Path]:
    """One input writes OUTPUT itself; several write OUTPUT/<name>.zarr."""
    if not multiple:
        if output.suffix.lower() in OTHER_FORMAT_SUFFIXES:
            raise UsageError(
                f"-o {output}: label images are written as OME-Zarr (name it .zarr); "
                f"for a {output.suffix} file add it as a side output (--geotiff FILE.tif, --preview FILE.png)"
            )
        return [output]
    names = [p.name[: -len(p.suffix)] if p.suffix else p.name for p in inputs]
    if len(set(names)) != len(names):
        raise UsageError("several inputs share a name; segment them into separate output folders")
    return [output / f"{name}{OUTPUT_SUFFIX}" for name in names]


def segment(
    inputs: Sequence[Path | str],
    output: Path | str,
    *,
    model: ModelSettings | ModelBundle | None = None,
    inference: InferenceSettings | None = None,
    outputs: OutputSettings | None = None,
    run: RunSettings | None = None,
) -> list[SegmentResult]:
    """Segment every input image into an OME-Zarr label image; returns one result per image.

    `model` is a ModelSettings (default: the bundled model) or an already loaded ModelBundle (reused
    across calls, as `benchmark` does); the other settings objects default to the CLI's defaults.
    """
    inference = inference or InferenceSettings()
    outputs = outputs or OutputSettings()
    run = run or RunSettings()
    if run.resume:
        raise UsageError("segment has no --resume yet: re-run with --overwrite")
    paths = expand_inputs(inputs)
    multiple = len(paths) > 1 or any(Path(i).is_dir() and not is_zarr_dir(Path(i)) for i in inputs)
    targets = output_paths(paths, Path(output), multiple)
    previews = _side_paths(targets, outputs.preview, multiple, PREVIEW_SUFFIXES, "--preview")
    geotiffs = _side_paths(targets, outputs.geotiff, multiple, GEOTIFF_SUFFIXES, "--geotiff")
    for out in [*targets, *previews, *geotiffs]:  # refuse before any work: a batch never stops halfway on this
        if out is not None and out.exists() and not run.overwrite:
            raise OutputError(f"{out}: already exists (use --overwrite to replace it)")
    bundle = model if isinstance(model, ModelBundle) else resolve_model(model)
    warning = pairing_warning(bundle)
    if warning:
        warnings.warn(warning, MagnetWarning, stacklevel=2)
    engine = Engine(bundle, inference)
    make_output_folder(Path(output) if multiple else Path(output).parent, "-o")
    for path, option in [*((p, "--preview") for p in previews), *((g, "--geotiff") for g in geotiffs)]:
        if path is not None:
            make_output_folder(path.parent, option)
    return [
        _segment_one(engine, path, out, side, outputs, run)
        for path, out, side in zip(paths, targets, zip(previews, geotiffs))
    ]


def _side_paths(
    outputs: list[Path], given: Path | None, multiple: bool, suffixes: tuple[str, ...], option: str
) -> list[Path | None]:
    """Paths of per-image side outputs (preview PNG, GeoTIFF): the file itself, or a folder of them.
    A file is written in the format its suffix names, so a suffix we cannot write is refused."""
    if given is None:
        return [None] * len(outputs)
    if not multiple:
        if given.suffix.lower() not in suffixes:
            raise UsageError(f"{option} {given}: writes {' or '.join(suffixes)} files; name it so")
        return [given]
    return [given / (out.name[: -len(OUTPUT_SUFFIX)] + suffixes[0]) for out in outputs]


def _segment_one(
    engine: Engine,
    path: Path,
    output: Path,
    side_outputs: tuple[Path | None, Path | None],
    outputs: OutputSettings,
    run: RunSettings,
) -> SegmentResult:
    start = time.perf_counter()
    if engine.device.type == "cuda":  # each image's peak, not the process's
        torch.cuda.reset_peak_memory_stats(engine.device)
    bundle = engine.bundle
    preview, geotiff = side_outputs
    # An input without a stored pyramid gets a temporary one, deleted when the source closes.
    with ensure_pyramid(open_image(path), min_size=max(bundle.input_size)) as source:
        plan = plan_for(source.height, source.width, bundle, engine.settings)
        attributes = {"magnet": run_record(engine, path, plan, source.georeference)}
        # The writer finalises (renames into place) only if the block ends cleanly; else it aborts.
        with LabelWriter(
            output,
            source.height,
            source.width,
            bundle.classes,
            zarr_format=int(outputs.zarr_format),
            write_probabilities=outputs.write_probabilities,
            write_uncertainty=outputs.write_uncertainty,
            attributes=attributes,
            overwrite=run.overwrite,
        ) as writer:
            bars = LevelProgress(path.name, windows_per_level(plan, engine.settings), progress_enabled(run.progress))
            stats, histogram = _stream_into(
                engine, source, writer, bars, outputs.write_probabilities, outputs.write_uncertainty
            )
        if preview is not None:
            write_preview(output, preview, bundle.classes, thumbnail=_thumbnail(source, engine.normalization))
        if geotiff is not None:
            write_geotiff(output, geotiff, source.georeference)
    return SegmentResult(
        input=str(path),
        output=str(output),
        height=source.height,
        width=source.width,
        mode=engine.settings.mode.value,
        levels=plan.depth,
        windows=stats.windows,
        windows_per_level=stats.windows_per_level,
        seconds=round(time.perf_counter() - start, 3),
        segmenter_seconds=round(stats.segmenter_seconds, 3),
        refiner_seconds=round(stats.refiner_seconds, 3),
        read_wait_seconds=round(stats.read_wait_seconds, 3),
        device=stats.device,
        preview=str(preview) if preview else None,
        geotiff=str(geotiff) if geotiff else None,
        class_pixels={c.name: int(n) for c, n in zip(bundle.classes, histogram)},
        peak_gpu_mb=_peak_gpu_mb(stats.device),
    )


def run_record(engine: Engine, path: Path, plan: ScalePlan, georeference: dict | None) -> dict:
    """The output's run metadata: the input, the model, and every setting that shaped the labels, with
    the bundle defaults resolved (the points and kernel actually used, the levels actually planned)."""
    from magnet_cli import __version__

    bundle = engine.bundle
    record = engine.settings.record()
    record.update(
        {
            "source": str(path),
            "model": bundle.name,
            "model_path": str(bundle.path) if bundle.path is not None else None,
            "magnet_cli_version": __version__,
            "points": engine.points,
            "smooth_kernel": engine.kernel,
            "levels": [[lv.height, lv.width] for lv in plan.levels],
            "input_size": list(bundle.input_size),
            "mean": list(bundle.segmenter.mean) if bundle.segmenter.mean else None,
            "std": list(bundle.segmenter.std) if bundle.segmenter.std else None,
            "value_range": list(bundle.value_range) if bundle.value_range else None,
            "refiner": bundle.refiner is not None,
            "device": str(engine.device),
            "georeference": georeference,
        }
    )
    return record


def _peak_gpu_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**20, 1)


def _stream_into(
    engine: Engine,
    source: ImageSource,
    writer: LabelWriter,
    bars: LevelProgress,
    write_probabilities: bool,
    write_uncertainty: bool,
) -> tuple[RunStats, np.ndarray]:
    """Run the engine with a sink that turns probabilities into labels and writes them on a thread."""
    num_classes = engine.bundle.num_classes
    label_dtype = np.uint16 if num_classes > 255 else np.uint8
    histogram = np.zeros(num_classes, dtype=np.int64)

    def write_window(y0: int, x0: int, probabilities: torch.Tensor) -> None:
        # On the writer thread: the argmax and the histogram overlap the main thread's model calls.
        labels = class_labels(probabilities).numpy().astype(label_dtype)
        histogram[:] += np.bincount(labels.ravel(), minlength=num_classes)
        probs = probabilities.numpy() if write_probabilities else None
        unc = uncertainty_of(probabilities[None])[0, 0].numpy() if write_uncertainty else None
        writer.write(y0, x0, labels, probs, unc)

    background = BackgroundWriter(write_window, initializer=one_intra_op_thread)

    def sink(region: tuple[int, int, int, int], probabilities: torch.Tensor) -> None:
        background.submit(region[0], region[1], probabilities.float().cpu())

    try:
        with bars:
            stats = engine.run(source, sink, bars.advance)
    finally:
        background.close()  # drains queued writes; re-raises a write error
    return stats, histogram


def _thumbnail(source: ImageSource, normalization: PixelNormalization, max_size: int = 1024) -> np.ndarray:
    """An RGB uint8 thumbnail read lazily from the input's coarsest fitting level."""
    scale = min(1.0, max_size / max(source.height, source.width))
    h, w = max(1, round(source.height * scale)), max(1, round(source.width * scale))
    rgb = source.read(Box(0, 0, source.height, source.width), h, w, normalization)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
