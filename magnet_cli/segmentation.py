"""`segment`: images in, OME-Zarr label images out. The library function behind `magnet segment`."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from magnet_cli import devices
from magnet_cli.classes import ClassInfo, parse_classes
from magnet_cli.errors import InputError, MagnetError, MagnetWarning, ModelError, OutputError, UsageError
from magnet_cli.inputs import OUTPUT_SUFFIX, expand_inputs, is_list_input, output_paths
from magnet_cli.io.background import BackgroundWriter
from magnet_cli.io.blank_mask import BlankMask, blank_mask, label_nodata, might_be_blank
from magnet_cli.io.folders import check_off_inputs, make_output_folder
from magnet_cli.io.base import Box, ImageSource, PixelNormalization, choose_bands
from magnet_cli.io.geotiff import NO_COG_WARNING, cog_supported, has_georeferencing, is_magnet_geotiff, write_geotiff
from magnet_cli.io.label_placement import LabelPlacement, check_fits, find_placement, prepare_labels_folder
from magnet_cli.io.label_placement import register as register_label
from magnet_cli.io.labels import (
    PARTIAL_INFIX,
    LabelWriter,
    label_dtype,
    foreign_entries,
    leftovers_of,
    magnet_marker,
    remove_output,
)
from magnet_cli.io.georeference import scaled_georeference
from magnet_cli.io.partial_store import (
    CREATING,
    PYRAMID,
    STORE_ENTRIES,
    PartialStore,
    fingerprint,
    input_identity,
    is_in_use,
    partial_name,
)
from magnet_cli.io.open import open_image
from magnet_cli.io.pixel_size import PixelSize
from magnet_cli.io.preview import is_magnet_preview, write_preview
from magnet_cli.io.resampled import FullResolutionWriter, ResampledSource, resampled, working_scale, working_shape
from magnet_cli.io.vector import VECTOR_SUFFIXES, is_magnet_vector, require_gis, tile_count, write_vector
from magnet_cli.io.pyramid_cache import ensure_pyramid
from magnet_cli.io.value_range import resolve_value_range
from magnet_cli.io.zarr_source import is_zarr_dir
from magnet_cli.models.bundle import ModelBundle, bundle_from_parts, check_input_size, load_bundle, pairing_warning
from magnet_cli.models.default import default_model_dir
from magnet_cli.pipeline import Engine, RunStats, plan_for
from magnet_cli.pyramid import ScalePlan
from magnet_cli.progress import LevelProgress, counting_bar, progress_enabled
from magnet_cli.refine import class_labels, host_class_labels, uncertainty as uncertainty_of
from magnet_cli.runtime import one_intra_op_thread
from magnet_cli.settings import BACKGROUND_WORDS, InferenceSettings, LabelsAt, ModelSettings, OutputSettings, RunSettings, with_values
from magnet_cli.units import BLOCK_SIDE, SUBTREE_LEVELS, Unit
from magnet_cli.units import shard as shard_units

PREVIEW_SUFFIXES = (".png",)
GEOTIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class SegmentResult:
    """What one image's run produced; `magnet segment --json` prints a list of these. A failed image of a
    batch is a record too: status "failed", the reason in `error`, zeros for what was never measured."""

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
    selection_seconds: float = 0.0  # choosing and replacing refined points
    # Windows segmented and refined per level: in --mode fast the chosen ones (what --fast-patches asked
    # for, about), every window walked otherwise
    refined_per_level: list[int] = field(default_factory=list)
    precision: str = ""  # the model calls' precision (what --precision auto chose)
    value_range: list[float] | None = None  # input values mapped to [0, 1] (what --value-range auto chose)
    resolution: str | None = None  # the working pixel size ("0.5 um"), where the input states its own
    resolution_factor: list[float] | None = None  # input pixels per working pixel (y, x); [1, 1] at full resolution
    preview: str | None = None
    geotiff: str | None = None
    vector: str | None = None
    class_pixels: dict[str, int] = field(default_factory=dict)
    nodata_pixels: int = 0  # label pixels written as no data (blank regions, --background)
    nodata: int | None = None  # the no-data label value, when the run may write it
    peak_gpu_mb: float | None = None  # torch's max allocated memory on a CUDA device during this image
    status: str = "ok"  # "ok" | "failed" | "skipped" (finished before, with --resume; or not in this --shard)
    error: str | None = None
    units: int = 0  # units of work this run did (the rest were finished before, or are other shards')
    units_total: int = 0
    published: bool = False  # whether this run published OUTPUT (with --shard, the one that finished last)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def skipped(cls, input: Path, output: Path, device: str) -> SegmentResult:
        """--resume found the output finished by an earlier run."""
        return cls(
            input=str(input), output=str(output), height=0, width=0, mode="", levels=0, windows=0,
            windows_per_level=[], seconds=0.0, segmenter_seconds=0.0, refiner_seconds=0.0,
            read_wait_seconds=0.0, device=device, status="skipped",
        )

    @classmethod
    def failed(cls, input: Path, output: Path, error: str, seconds: float, device: str) -> SegmentResult:
        return cls(
            input=str(input), output=str(output), height=0, width=0, mode="", levels=0, windows=0,
            windows_per_level=[], seconds=round(seconds, 3), segmenter_seconds=0.0, refiner_seconds=0.0,
            read_wait_seconds=0.0, device=device, status="failed", error=error,
        )


def resolve_model(settings: ModelSettings | None = None) -> ModelBundle:
    """A bundle (--model, else the bundled default), or a bring-your-own segmenter with its contract."""
    settings = settings or ModelSettings()
    class_list = parse_classes(settings.classes) if settings.classes is not None else None
    order = settings.refiner_input_order.value if settings.refiner_input_order is not None else None
    if settings.segmenter is not None:
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
    check_input_size(settings.input_size, bundle, directory)
    if settings.mean is not None:
        bundle.segmenter.mean, bundle.segmenter.std = settings.mean, settings.std  # type: ignore[assignment]
    return bundle


def with_bundle_reading(inference: InferenceSettings, bundle: ModelBundle) -> InferenceSettings:
    """`inference` with the bundle's bands and value-range rule where no option gives them (option > bundle >
    default). A bundle's MIN,MAX range stays the bundle's (`Engine` and `resolve_value_range` name it so)."""
    bands, value_range = bundle.reading(inference.bands, inference.value_range)
    values = {"bands": bands} if bands != inference.bands else {}
    if isinstance(value_range, str) and inference.value_range is None:
        values["value_range"] = value_range
    return with_values(inference, **values) if values else inference


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
    problems: dict[Path, str] = {}  # inputs a batch reports as failed instead of stopping for
    paths = expand_inputs(inputs, problems)
    multiple = len(paths) > 1 or any(is_list_input(i) or (Path(i).is_dir() and not is_zarr_dir(Path(i))) for i in inputs)
    if problems and not multiple:
        raise InputError(next(iter(problems.values())))
    targets = output_paths(paths, Path(output), multiple)
    sides = side_outputs(targets, outputs, multiple)
    if outputs.vector is not None:
        require_gis()
    check_outputs(paths, targets, sides, run)  # before any work
    bundle = model if isinstance(model, ModelBundle) else resolve_model(model)
    warning = pairing_warning(bundle)
    if warning:
        warnings.warn(warning, MagnetWarning, stacklevel=2)
    if any(side.geotiff is not None for side in sides) and not cog_supported():
        warnings.warn(NO_COG_WARNING, MagnetWarning, stacklevel=2)
    engine = Engine(bundle, with_bundle_reading(inference, bundle))
    make_output_folder(Path(output) if multiple else Path(output).parent, "-o")
    for side in sides:
        for option, path in side.given():
            make_output_folder(path.parent, option)
    settings = None if isinstance(model, ModelBundle) else (model or ModelSettings())
    client = _cluster_client(run.cluster, settings)
    items = list(zip(paths, targets, sides))

    def failed(index: int, error: BaseException) -> SegmentResult:
        path, out, _ = items[index]
        reason = str(error) if isinstance(error, MagnetError) else f"{path}: {type(error).__name__}: {error}"
        return SegmentResult.failed(path, out, reason, 0.0, str(engine.device))

    results: dict[int, SegmentResult] = {}
    jobs: dict[int, ImageJob] = {}

    def guarded(index: int, action: Callable[[], SegmentResult | ImageJob]) -> SegmentResult | ImageJob | None:
        """One image's step; in a batch its failure becomes its record (KeyboardInterrupt still stops)."""
        start = time.perf_counter()
        try:
            return action()
        except Exception as error:
            if not multiple:  # one image: its error is the run's error
                raise
            results[index] = failed(index, error)
            results[index].seconds = round(time.perf_counter() - start, 3)
            return None

    try:
        for index, (path, out, side) in enumerate(items):
            if path in problems:
                results[index] = failed(index, InputError(problems[path]))
            elif run.resume and _is_finished_output(out):
                results[index] = SegmentResult.skipped(path, out, str(engine.device))
            else:
                job = guarded(index, lambda: image_job(engine, path, out, side, settings, outputs, run))
                if job is not None:
                    jobs[index] = job  # type: ignore[assignment]
        if client is not None:
            results.update(_segment_on_cluster(engine, client, jobs, run, multiple, failed))
        else:
            shares = _shard_shares(engine, jobs, run.shard) if run.shard is not None else {}
            for index, job in jobs.items():
                share = shares.get(index)
                if share is not None and not share:  # none of this image's units fall to this shard
                    results[index] = SegmentResult.skipped(job.input, job.output, str(engine.device))
                    continue
                if share is not None and os.path.lexists(job.output) and not run.overwrite:
                    # Another shard may have published the images it finished; this one's are its own.
                    results[index] = failed(index, OutputError(f"{job.output}: already exists; use --overwrite to replace it"))
                    if not multiple:
                        raise OutputError(results[index].error)
                    continue
                result = guarded(index, lambda: _segment_one(engine, job, run, share))
                if result is not None:
                    results[index] = result  # type: ignore[assignment]
    finally:
        if client is not None:
            from magnet_cli.distributed import close_client

            close_client(client)
    return [results[index] for index in range(len(items))]


def _shard_shares(engine: Engine, jobs: dict[int, ImageJob], shard: tuple[int, int]) -> dict[int, set[str]]:
    """This shard's units of every image: the units of all images in order, dealt out in contiguous runs,
    so a folder splits by image and a big image by subtree, the same way in every shard. An existing
    output matters to a shard only if it has a share of that image (others publish the rest)."""
    everything = [
        (index, unit.name) for index, job in jobs.items() for unit in engine.units(engine.plan(job.height, job.width))
    ]
    shares: dict[int, set[str]] = {index: set() for index in jobs}
    for index, name in shard_units(everything, *shard):
        shares[index].add(name)
    return shares


def _cluster_client(address: str | None, model: ModelSettings | None) -> Any:
    """A Dask client for --cluster (None without it)."""
    if address is None:
        return None
    if model is None:
        raise UsageError("--cluster runs the model on workers: give model settings (a path), not a loaded bundle")
    from magnet_cli.distributed import client_for

    return client_for(address)


def check_outputs(inputs: list[Path], targets: list[Path], sides: list[SideOutputs], run: RunSettings) -> None:
    """Refuse, before any work, every output that would replace an input, something magnet-cli did not
    write, or (without --overwrite or --resume) anything at all, including an interrupted run's leftovers."""
    overwrite = run.overwrite
    places = [
        *((out, "-o", foreign_entries) for out in targets),
        *((path, option, _foreign_file(SIDE_FORMATS[option][1])) for side in sides for option, path in side.given()),
    ]
    for path, option, _ in places:
        check_off_inputs(path, option, inputs, labels_beside=option == "-o")
    existing = [path for path, _, _ in places if os.path.lexists(path)]
    if existing and not (overwrite or run.resume or run.shard is not None):  # shards: see _shard_shares
        more = f" (and {len(existing) - 1} more output(s))" if len(existing) > 1 else ""
        raise OutputError(
            f"{existing[0]}: already exists{more}; use --overwrite to replace magnet-cli's outputs "
            "(or --resume to keep finished ones)"
        )
    for path, option, foreign in places:
        extra = foreign(path) if os.path.lexists(path) else None
        if extra:
            raise OutputError(
                f"{option} {path}: not written by magnet-cli (holds {', '.join(extra[:3])}); "
                "--overwrite replaces only magnet-cli's own outputs"
            )
    for out in targets:
        for leftover in leftovers_of(out):
            if run.joins_partial and leftover.name.startswith(f"{out.name}{PARTIAL_INFIX}{CREATING}"):
                continue  # being laid out by another shard right now
            extra = foreign_entries(leftover)
            if extra:
                raise OutputError(f"{leftover}: not written by magnet-cli (holds {', '.join(extra[:3])}); move it away")
            if not (overwrite or run.joins_partial):
                raise OutputError(
                    f"{leftover}: an interrupted run's partial output (or a run still writing {out.name}); "
                    "re-run with --resume to finish it, or with --overwrite to start over"
                )


def _foreign_file(is_ours) -> Any:  # noqa: ANN001
    """A foreign-entries test for a side file: None when magnet-cli wrote it, else its name."""
    return lambda path: None if is_ours(path) else [Path(path).name]


@dataclass(frozen=True)
class SideOutputs:
    """The files one image's run writes beside its label image, each None when not asked for."""

    preview: Path | None = None
    geotiff: Path | None = None
    vector: Path | None = None

    def given(self) -> list[tuple[str, Path]]:
        """(option, path) of each side output asked for."""
        return [(option, getattr(self, option[2:])) for option in SIDE_FORMATS if getattr(self, option[2:]) is not None]


# Each side output: its option (also its OutputSettings and SideOutputs field, less the dashes), the
# suffixes it writes (the first names the files of a folder) and how to tell a file magnet-cli wrote.
SIDE_FORMATS: dict[str, tuple[tuple[str, ...], Callable[[Path], bool]]] = {
    "--preview": (PREVIEW_SUFFIXES, is_magnet_preview),
    "--geotiff": (GEOTIFF_SUFFIXES, is_magnet_geotiff),
    "--vector": (VECTOR_SUFFIXES, is_magnet_vector),
}


def side_outputs(targets: list[Path], outputs: OutputSettings, multiple: bool) -> list[SideOutputs]:
    """Each image's side outputs: the files given, or for several inputs a file per image in the folder
    given. A file is written in the format its suffix names, so a suffix we cannot write is refused."""
    paths: dict[str, list[Path | None]] = {}
    for option, (suffixes, _) in SIDE_FORMATS.items():
        given: Path | None = getattr(outputs, option[2:])
        if given is None:
            paths[option[2:]] = [None] * len(targets)
        elif not multiple:
            if given.suffix.lower() not in suffixes:
                raise UsageError(f"{option} {given}: writes {' or '.join(suffixes)} files; name it so")
            paths[option[2:]] = [given]
        else:
            paths[option[2:]] = [given / (out.name[: -len(OUTPUT_SUFFIX)] + suffixes[0]) for out in targets]
    return [SideOutputs(**{name: paths[name][index] for name in paths}) for index in range(len(targets))]


@dataclass(frozen=True)
class ImageJob:
    """One image's run as every process taking part sees it: the driver, shards, Dask workers (it is
    picklable and small: names and settings, no pixels)."""

    input: Path
    output: Path
    model: ModelSettings | None  # None when segment() was handed a loaded bundle (no workers then)
    inference: InferenceSettings
    outputs: OutputSettings
    max_pixels: int
    side_outputs: SideOutputs
    fingerprint: str
    attributes: dict  # the label store's attributes (the run record)
    height: int
    width: int
    placement: LabelPlacement | None = None  # the labels go beside an OME-Zarr image (IMAGE.zarr/labels/NAME)
    value_range: tuple[float, float] | None = None  # input values that map to [0, 1] (io/value_range.py)
    # At a coarser --resolution, `height` and `width` are the working size (what the engine segments) and
    # these the input's; None: the same.
    full_height: int | None = None
    full_width: int | None = None
    labels_full: bool = False  # labels at the input's full resolution (--labels-at full, labels beside their image)
    pixel_size: PixelSize | None = None  # the input's level-0 pixel size, where it states one

    @property
    def nodata(self) -> int | None:
        """The no-data label value of blank regions, when this run may write any (--background)."""
        return self.attributes["magnet"].get("nodata")

    @property
    def full_shape(self) -> tuple[int, int]:
        return self.full_height or self.height, self.full_width or self.width

    @property
    def label_shape(self) -> tuple[int, int]:
        """The label image's size: the working one, or the input's."""
        return self.full_shape if self.labels_full else (self.height, self.width)

    @property
    def label_scale(self) -> tuple[float, float]:
        """Input pixels per label pixel (y, x)."""
        (full_h, full_w), (label_h, label_w) = self.full_shape, self.label_shape
        return full_h / label_h, full_w / label_w

    @property
    def working_scale(self) -> tuple[float, float]:
        """Input pixels per working pixel (y, x)."""
        full_h, full_w = self.full_shape
        return full_h / self.height, full_w / self.width


@dataclass
class _Started:
    """An image's run once this process holds its partial store: the units, and those left to do here."""

    job: ImageJob
    store: PartialStore
    plan: ScalePlan
    units: list[Unit]
    todo: list[Unit]
    shared: bool  # whether other processes (shards, workers) hold the store too
    start: float


def _start(engine: Engine, job: ImageJob, run: RunSettings, shared: bool, share: set[str] | None = None) -> _Started:
    """Hold the image's partial store (laying it out if new) and build the input's pyramid in it once,
    before any worker needs it. `share`: the units this process does (all when None)."""
    start = time.perf_counter()
    _clear_leftovers(job.output, partial_name(job.output, job.fingerprint), run)
    store = open_store(job, engine.bundle.classes, shared=shared)
    started = _Started(job, store, engine.plan(job.height, job.width), [], [], shared, start)
    try:
        started.units = engine.units(started.plan)
        mine = [unit for unit in started.units if share is None or unit.name in share]
        finished = store.finished()
        started.todo = [unit for unit in mine if unit.name not in finished]
        with _job_source(job, store, engine.bundle):
            pass
    except BaseException as error:
        _abandon(started, error)
        raise
    return started


def _abandon(started: _Started, error: BaseException) -> None:
    """After an interruption keep the store for --resume; after a failure remove it unless it is shared."""
    if isinstance(error, KeyboardInterrupt) or started.shared:
        started.store.release()
    else:
        started.store.remove()


def _segment_one(engine: Engine, job: ImageJob, run: RunSettings, share: set[str] | None = None) -> SegmentResult:
    """One image in this process: all of it, or the units in `share` (its --shard share)."""
    if engine.device.type == "cuda":  # each image's peak, not the process's
        torch.cuda.reset_peak_memory_stats(engine.device)
    started = _start(engine, job, run, shared=run.shard is not None, share=share)
    try:
        bars = LevelProgress(job.input.name, engine.windows_to_do(started.plan, started.todo), progress_enabled(run.progress))
        with _job_source(job, started.store, engine.bundle) as source:
            stats = _work(engine, job, started.store, source, started.todo, bars)
        return _finish(engine, started, stats, run)
    except BaseException as error:
        _abandon(started, error)
        raise


def _finish(engine: Engine, started: _Started, stats: RunStats, run: RunSettings) -> SegmentResult:
    """Publish the output if every unit is done and no other process is publishing it; the result."""
    job, store, bundle = started.job, started.store, engine.bundle
    finished = store.finished()
    published = all(unit.name in finished for unit in started.units) and store.claim_publication()
    if published:
        with _job_source(job, store, bundle) as source:
            _publish_output(job, store, source, engine, run)
    store.release()
    histogram = np.sum([entry.get("class_pixels", [0] * bundle.num_classes) for entry in finished.values()], axis=0)
    nodata_pixels = sum(int(entry.get("nodata_pixels", 0)) for entry in finished.values())
    side = job.side_outputs
    return SegmentResult(
        input=str(job.input),
        output=str(job.output),
        height=job.label_shape[0],
        width=job.label_shape[1],
        mode=engine.settings.mode.value,
        levels=started.plan.depth,
        windows=stats.windows,
        windows_per_level=stats.windows_per_level,
        refined_per_level=stats.refined_per_level,
        seconds=round(time.perf_counter() - started.start, 3),
        segmenter_seconds=round(stats.segmenter_seconds, 3),
        refiner_seconds=round(stats.refiner_seconds, 3),
        read_wait_seconds=round(stats.read_wait_seconds, 3),
        device=stats.device,
        selection_seconds=round(stats.selection_seconds, 3),
        precision=engine.precision,
        value_range=list(job.value_range) if job.value_range is not None else None,
        resolution=job.attributes["magnet"].get("resolution"),
        resolution_factor=list(job.working_scale),
        preview=str(side.preview) if side.preview and published else None,
        geotiff=str(side.geotiff) if side.geotiff and published else None,
        vector=str(side.vector) if side.vector and published else None,
        class_pixels={c.name: int(n) for c, n in zip(bundle.classes, histogram)} if published else {},
        nodata_pixels=nodata_pixels if published else 0,
        nodata=job.nodata,
        peak_gpu_mb=_peak_gpu_mb(stats.device),
        units=len(started.todo),
        units_total=len(started.units),
        published=published,
    )


def _segment_on_cluster(
    engine: Engine, client: Any, jobs: dict[int, ImageJob], run: RunSettings, multiple: bool, failed: Callable
) -> dict[int, SegmentResult]:
    """Every unit of every image as one Dask task, all submitted at once (a folder of small images spreads
    over the workers too); each image is published when its tasks are done. `failed(index, error)` makes
    an image's failure record."""
    from magnet_cli.distributed import run_tasks, threads_for

    results: dict[int, SegmentResult] = {}
    started: dict[int, _Started] = {}
    for index, job in jobs.items():
        try:
            started[index] = _start(engine, job, run, shared=True)
        except Exception as error:
            if not multiple:
                raise
            results[index] = failed(index, error)
    totals = {index: RunStats(device=str(engine.device), windows_per_level=[0] * s.plan.depth, refined_per_level=[0] * s.plan.depth)
              for index, s in started.items()}
    errors: dict[int, BaseException] = {}
    depth = max((s.plan.depth for s in started.values()), default=1)
    planned = [0] * depth
    for s in started.values():
        for level, count in enumerate(engine.windows_to_do(s.plan, s.todo)):
            planned[level] += count
    title = started[next(iter(started))].job.input.name if len(started) == 1 else f"{len(started)} images"
    bars = LevelProgress(title, planned, progress_enabled(run.progress))

    def done(index: int, stats: dict) -> None:
        total = totals[index]
        for level, count in enumerate(stats["windows_per_level"]):
            total.windows_per_level[level] += count
            bars.advance(level, count)
        for level, count in enumerate(stats["refined_per_level"]):
            total.refined_per_level[level] += count
        for name in ("segmenter_seconds", "refiner_seconds", "selection_seconds", "read_wait_seconds", "total_seconds"):
            setattr(total, name, getattr(total, name) + stats[name])

    try:
        with bars:
            work = {index: (s.job, [unit.name for unit in s.todo]) for index, s in started.items()}
            run_tasks(client, work, threads_for(client), done, errors.__setitem__)
        for index, s in started.items():
            if index in errors:
                _abandon(s, errors[index])
                if not multiple:
                    raise errors[index]
                results[index] = failed(index, errors[index])
                continue
            try:
                results[index] = _finish(engine, s, totals[index], run)
            except Exception as error:
                _abandon(s, error)
                if not multiple:
                    raise
                results[index] = failed(index, error)
    except KeyboardInterrupt:
        for s in started.values():
            s.store.release()
        raise
    return results


def image_job(
    engine: Engine,
    path: Path,
    output: Path,
    side_outputs: SideOutputs,
    model: ModelSettings | None,
    outputs: OutputSettings,
    run: RunSettings,
) -> ImageJob:
    """Open the input once to plan its run: size, run record and the fingerprint that names its store."""
    with open_image(path, max_pixels=run.max_pixels) as raw:
        height, width, georeference, native = raw.height, raw.width, raw.georeference, raw.pixel_size
        bands = choose_bands(raw.bands, engine.normalization, path)  # the model's bands; a mismatch fails here
        value_range, range_from = resolve_value_range(raw, engine.settings.value_range, engine.bundle.value_range, bands)
        blank_possible = might_be_blank(raw, engine.settings.background)
    target, asked_by = _resolution_asked(engine)
    scale = working_scale(native, target, path, asked_by)
    working_height, working_width = working_shape(height, width, scale)
    placement = find_placement(output)
    if placement is not None:
        check_fits(placement, height, width, path)
        prepare_labels_folder(placement)
    if side_outputs.geotiff is not None and not has_georeferencing(georeference):
        warnings.warn(f"{path} has no georeferencing: the GeoTIFF is in pixel space", MagnetWarning, stacklevel=2)
    record = run_record(engine, path, plan_for(working_height, working_width, engine.bundle, engine.settings), georeference)
    factor = (height / working_height, width / working_width)
    labels_full = placement is not None or outputs.labels_at == LabelsAt.full
    record.update(
        value_range=list(value_range), value_range_from=range_from,
        pixel_size=str(native) if native is not None else None,  # the input's
        resolution=str(native.scaled(*factor)) if native is not None else None,  # the working one
        resolution_factor=list(factor), working_size=[working_height, working_width],
        labels_at="full" if labels_full else "working",
        # The label value of blank regions (--background), recorded when the run may write it.
        nodata=label_nodata(label_dtype(engine.bundle.num_classes)) if blank_possible else None,
    )
    digest = run_fingerprint(record, path, outputs, side_outputs)
    record["fingerprint"] = digest
    return ImageJob(
        input=path, output=output, model=model, inference=engine.settings, outputs=outputs,
        max_pixels=run.max_pixels, side_outputs=side_outputs, fingerprint=digest,
        attributes={"magnet": record}, height=working_height, width=working_width, placement=placement,
        value_range=value_range, full_height=height, full_width=width, labels_full=labels_full, pixel_size=native,
    )


def _resolution_asked(engine: Engine) -> tuple[PixelSize | str | None, str]:
    """The working resolution asked for, and by whom: --resolution, else the bundle's, else none (full)."""
    if engine.settings.resolution is not None:
        return engine.settings.resolution, "--resolution"
    spec = engine.bundle.spec
    return (spec.resolution if spec is not None else None), "the model's resolution"


def _writer_options(job: ImageJob) -> dict:
    # Beside an image, the image's Zarr format (NGFF 0.4 images are Zarr v2), whatever --zarr-format says.
    zarr_format = job.placement.zarr_format if job.placement is not None else int(job.outputs.zarr_format)
    size, translation = job.pixel_size, (0.0, 0.0)
    if size is not None:
        # A label pixel covers s x s input pixels (s = label_scale): its centre lies (s - 1) / 2 of them in.
        size = size.scaled(*job.label_scale)
        translation = tuple((s - 1) / 2 * p for s, p in zip(job.label_scale, (job.pixel_size.y, job.pixel_size.x)))
    return dict(
        zarr_format=zarr_format, write_probabilities=job.outputs.write_probabilities,
        write_uncertainty=job.outputs.write_uncertainty, attributes=job.attributes, store_entries=STORE_ENTRIES,
        placement=job.placement, pixel_size=size, translation=translation, nodata=job.nodata,
    )


def open_store(job: ImageJob, classes: list[ClassInfo], shared: bool) -> PartialStore:
    """Join the image's partial store, or lay it out (an empty label store) and join it."""

    def lay_out(folder: Path) -> None:
        LabelWriter(job.output, *job.label_shape, classes, partial=folder, overwrite=True, **_writer_options(job)).abort()

    return PartialStore.open(job.output, job.fingerprint, lay_out, shared=shared)


def _job_source(job: ImageJob, store: PartialStore, bundle: ModelBundle) -> ImageSource:
    """The input at the working resolution, with its temporary pyramid (when it has none) kept in the partial
    store."""
    source = ensure_pyramid(open_image(job.input, max_pixels=job.max_pixels), min_size=max(bundle.input_size), keep_in=store.path / PYRAMID)
    return resampled(source, job.height, job.width)


def _work(engine: Engine, job: ImageJob, store: PartialStore, source: ImageSource, units: list[Unit], bars: LevelProgress) -> RunStats:
    """Do `units` of the image in this process, into the partial store."""
    writer = LabelWriter(job.output, *job.label_shape, engine.bundle.classes, partial=store.path, overwrite=True, **_writer_options(job))
    working = (job.height, job.width)
    target = writer if job.label_shape == working else FullResolutionWriter(writer, working, job.label_shape)
    mask = None
    if job.nodata is not None and units:
        mask = blank_mask(source, engine.settings.background, engine.normalization_for(job.value_range))
    try:
        return _stream_into(engine, source, target, store, units, bars, job.outputs, job.value_range, mask)
    finally:
        writer.abort()  # releases the arrays; the store keeps what was written


def do_units(engine: Engine, job: ImageJob, names: Sequence[str]) -> dict:
    """Do the named units of an image (those not finished yet) into its shared partial store: what a Dask
    worker runs. Returns the work's statistics as plain values."""
    store = open_store(job, engine.bundle.classes, shared=True)
    try:
        plan = engine.plan(job.height, job.width)
        finished = store.finished()
        wanted = set(names)
        units = [unit for unit in engine.units(plan) if unit.name in wanted and unit.name not in finished]
        with _job_source(job, store, engine.bundle) as source:
            stats = _work(engine, job, store, source, units, LevelProgress(job.input.name, [0] * plan.depth, False))
    finally:
        store.release()
    return asdict(stats)


def _publish_output(job: ImageJob, store: PartialStore, source: ImageSource, engine: Engine, run: RunSettings) -> None:
    """Seal the label store, write the side outputs from it, then move everything into place. Side
    outputs go to hidden staging names first, so a failing one publishes nothing."""
    side, classes = job.side_outputs, engine.bundle.classes
    writer = LabelWriter(job.output, *job.label_shape, classes, partial=store.path, overwrite=run.overwrite, **_writer_options(job))
    # GIS outputs place the label pixels: the input's georeference, scaled when they are coarser.
    georeference = (source.full_resolution if isinstance(source, ResampledSource) else source).georeference
    staged: list[tuple[Path, Path]] = []
    try:
        levels = writer.seal()
        if side.preview is not None:
            staged.append((_staging_name(side.preview), side.preview))
            thumbnail = _thumbnail(source, engine.normalization_for(job.value_range))
            write_preview(levels, staged[-1][0], classes, thumbnail=thumbnail, nodata=job.nodata)
        if side.geotiff is not None:
            staged.append((_staging_name(side.geotiff), side.geotiff))
            write_geotiff(levels, staged[-1][0], scaled_georeference(georeference, *job.label_scale), classes=classes,
                          nodata=job.nodata)
        if side.vector is not None:
            staged.append((_staging_name(side.vector), side.vector))
            with counting_bar(run.progress, f"{job.input.name}: polygons", tile_count(*job.label_shape)) as advance:
                write_vector(
                    levels, staged[-1][0], classes, georeference, simplify=job.outputs.vector_simplify,
                    min_area=job.outputs.vector_min_area, advance=advance, scale=job.label_scale, nodata=job.nodata,
                )
        store.strip()
        writer.finalize()
        if job.placement is not None:
            register_label(job.placement)
        for temporary, final in staged:
            _publish(temporary, final)
    finally:
        writer.abort()
        for temporary, _ in staged:
            with contextlib.suppress(OSError):
                temporary.unlink()


def _is_finished_output(output: Path) -> bool:
    marker = magnet_marker(output)
    return marker is not None and marker.get("state") == "complete"


def run_fingerprint(record: dict, path: Path, outputs: OutputSettings, side_outputs: SideOutputs) -> str:
    """What a partial output must share with a run to be resumed or joined by it: the input file as it
    is now, the model and every setting that shapes the labels, the outputs, and how work is split."""
    record = {k: v for k, v in record.items() if k not in ("source", "device")}
    return fingerprint(
        {
            "record": record,
            "device_type": str(record.get("device", "")).split(":")[0],
            "input": input_identity(path),
            "model_files": _model_files(record.get("model_path")),
            "outputs": {
                "probabilities": outputs.write_probabilities,
                "uncertainty": outputs.write_uncertainty,
                "zarr_format": int(outputs.zarr_format),
                "side": [str(p.resolve()) if p is not None else None for p in astuple(side_outputs)],
                "vector": [outputs.vector_simplify, outputs.vector_min_area],
            },
            "units": [SUBTREE_LEVELS, BLOCK_SIDE],
            # A --background mask file shapes the labels as the input does.
            "background": input_identity(Path(record["background"])) if record.get("nodata") is not None
            and record.get("background") not in BACKGROUND_WORDS else None,
        }
    )


def _model_files(model_path: str | None) -> list:
    """Name, size and modification time of each file of the model, so that a model retrained in place
    never resumes a partial output of the old one."""
    if not model_path:
        return []
    folder = Path(model_path)
    files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]


def _clear_leftovers(output: Path, mine: Path, run: RunSettings) -> None:
    """Deal with partial outputs beside `output` before this image's run joins or creates `mine`."""
    for leftover in leftovers_of(output):
        if leftover == mine and run.joins_partial:
            continue  # resumed or joined
        if run.joins_partial and leftover.name.startswith(f"{output.name}{PARTIAL_INFIX}{CREATING}"):
            continue  # a store another shard is laying out right now (or a few empty folders a kill left)
        if run.overwrite and not (leftover == mine and run.shard is not None):
            if is_in_use(leftover):
                raise OutputError(f"{leftover}: a run is writing it now; --overwrite will not remove it under that run")
            remove_output(leftover)
            continue
        if leftover == mine:
            raise OutputError(
                f"{leftover}: an interrupted run's partial output; re-run with --resume to finish it, "
                "or with --overwrite to start over"
            )
        if leftover.name.startswith(f"{output.name}{PARTIAL_INFIX}") and (run.resume or run.shard is not None):
            raise OutputError(
                f"{leftover}: a partial output of another input or other settings; --resume continues only "
                "the same command: remove it, or start over with --overwrite"
            )
        raise OutputError(f"{leftover}: an interrupted run's leftovers; remove it, or re-run with --overwrite")


def _staging_name(path: Path) -> Path:
    """A hidden sibling a side output is written to before the labels are published."""
    return path.with_name(f".{path.name}.partial-{uuid.uuid4().hex}{path.suffix}")


def _publish(temporary: Path, final: Path) -> None:
    try:
        os.replace(temporary, final)
    except OSError as error:
        raise OutputError(f"cannot write {final}: {error.strerror or error}") from None


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
            "precision": engine.precision,  # what `auto` chose here
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
    store: PartialStore,
    units: list[Unit],
    bars: LevelProgress,
    outputs: OutputSettings,
    value_range: tuple[float, float] | None = None,
    blank: BlankMask | None = None,
) -> RunStats:
    """Run the engine over `units` with a sink that turns probabilities into labels and writes them on a
    thread; after each unit's last window the same thread stores the unit and records it in the ledger.
    Pixels on `blank` cells are written as the no-data label (probabilities and uncertainty 0)."""
    num_classes = engine.bundle.num_classes
    dtype = label_dtype(num_classes)
    nodata = label_nodata(dtype)
    histogram = np.zeros(num_classes + 1, dtype=np.int64)  # of the unit being written; last: no-data pixels
    on_device = devices.is_accelerator(engine.device)

    def write_blank(y0: int, x0: int, y1: int, x1: int) -> None:
        histogram[-1] += (y1 - y0) * (x1 - x0)
        probs = np.zeros((num_classes, y1 - y0, x1 - x0), np.float32) if outputs.write_probabilities else None
        unc = np.zeros((y1 - y0, x1 - x0), np.float32) if outputs.write_uncertainty else None
        writer.write(y0, x0, np.full((y1 - y0, x1 - x0), nodata, dtype), probs, unc)

    def write_window(y0: int, x0: int, probabilities: torch.Tensor | None, copies: tuple) -> None:
        if probabilities is not None:
            # On the CPU's writer thread: the argmax and the histogram overlap the main thread's model calls.
            labels = host_class_labels(probabilities.numpy()).astype(dtype, copy=False)
            probs = probabilities.numpy() if outputs.write_probabilities else None
            unc = uncertainty_of(probabilities[None])[0, 0].numpy() if outputs.write_uncertainty else None
            counts = None
        else:  # computed on the device; wait for its copies here, not on the thread feeding it
            labels, counts, probs, unc = (None if c is None else c.result().numpy() for c in copies)
            labels = labels.astype(dtype, copy=False)
        if blank is not None:  # a window part blank: computed as without the mask, its blank pixels no data
            on_blank = blank.pixels(y0, x0, y0 + labels.shape[0], x0 + labels.shape[1])
            if on_blank.any():
                labels, counts = np.where(on_blank, nodata, labels).astype(dtype), None
                histogram[-1] += int(on_blank.sum())
                probs = None if probs is None else np.where(on_blank, 0, probs)
                unc = None if unc is None else np.where(on_blank, 0, unc)
        if counts is None:
            counts = np.bincount(labels.ravel(), minlength=num_classes + 1)[:num_classes]
        histogram[:num_classes] += counts
        writer.write(y0, x0, labels, probs, unc)

    def finish_unit(unit: Unit) -> None:
        writer.end_unit(unit.name)
        store.record(unit.name, {"class_pixels": histogram[:num_classes].tolist(), "nodata_pixels": int(histogram[-1])})
        histogram[:] = 0

    writes = {"window": write_window, "blank": write_blank, "unit": finish_unit}

    def write(kind: str, *args: Any) -> None:
        writes[kind](*args)

    background = BackgroundWriter(write, initializer=one_intra_op_thread)

    def sink(region: tuple[int, int, int, int], probabilities: torch.Tensor | None) -> None:
        if probabilities is None:  # a blank region the engine skipped
            background.submit("blank", *region)
            return
        if not on_device:
            background.submit("window", region[0], region[1], probabilities.float(), ())
            return
        # A GPU sends back one byte per pixel instead of C floats: labels and counts are made there.
        labels = class_labels(probabilities)
        flat = labels.reshape(-1)
        # scatter_add, not bincount: its output size is fixed, so the stand-in (meta) device runs it too.
        counts = torch.zeros(num_classes, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
        copies = (
            devices.HostCopy(labels.to(torch.int32 if num_classes > 255 else torch.uint8)),
            devices.HostCopy(counts),
            devices.HostCopy(probabilities.float()) if outputs.write_probabilities else None,
            devices.HostCopy(uncertainty_of(probabilities[None].float())[0, 0]) if outputs.write_uncertainty else None,
        )
        background.submit("window", region[0], region[1], None, copies)

    try:
        with bars:
            stats = engine.run(source, sink, bars.advance, units=units, unit_done=lambda unit: background.submit("unit", unit),
                               value_range=value_range, blank=blank)
    finally:
        background.close()  # drains queued writes; re-raises a write error
    return stats


def _thumbnail(source: ImageSource, normalization: PixelNormalization, max_size: int = 1024) -> np.ndarray:
    """An RGB uint8 thumbnail read lazily from the input's coarsest fitting level."""
    scale = min(1.0, max_size / max(source.height, source.width))
    h, w = max(1, round(source.height * scale)), max(1, round(source.width * scale))
    rgb = source.read(Box(0, 0, source.height, source.width), h, w, normalization)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
