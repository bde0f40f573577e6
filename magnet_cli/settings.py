"""The settings objects the CLI builds and the library takes: which model, how to infer, what to write,
how to run, how to train.

Every value is validated here, once, when the object is made, so a library caller gets the same one-line
`UsageError` (naming the CLI option) as a shell user. Defaults live here too: `options.py` reads them, so
a default is written in one place. No torch import: `magnet --help` stays fast.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from magnet_cli.errors import UsageError
from magnet_cli.io.pixel_size import PixelSize, parse_resolution
from magnet_cli.models.refiner_names import REFERENCE, REFINER_ARCHITECTURES

# --- bounds (what memory and the models allow) ----------------------------------------------------------
MIN_INPUT_SIDE = 32  # the built-in nets downsample 16x; a smaller window has no pixels left at the bottom
MAX_INPUT_SIDE = 4096  # a 4096^2 window of 256 classes already holds 16 GiB of fp32 probabilities
MAX_LEVELS = 16  # 2^15 x 4096 px: far beyond any slide; a larger count is a typo
MAX_LEVEL_SIDE = 1 << 22
MAX_SMOOTH_KERNEL = 63  # the reference runs use 5 and 11; each step up costs kernel^2 per pixel
MAX_BATCH = 1024
MAX_CLASSES = 4096  # evaluation's C x C confusion matrix (128 MiB at 4096) and C-channel maps bound it
MAX_IGNORE_INDEX = 65535
MAX_EPOCHS = 100_000
MAX_STEPS = 10_000_000
MAX_SEED = 2**32 - 1  # numpy's SeedSequence and torch.manual_seed both accept this range
MAX_CROP = 4096
# Inputs declaring more pixels than this are refused before any work: a 40x whole-slide image is about
# 10^10 pixels, so 10^11 admits every real slide and stops a forged 10^7 x 10^7 header.
DEFAULT_MAX_PIXELS = 10**11


class Mode(str, Enum):
    """Inference modes (DESIGN section 3)."""

    magnet = "magnet"
    fast = "fast"
    patch = "patch"
    downsample = "downsample"


class Selection(str, Enum):
    """Where MagNet's k points are chosen: per window (streaming) or over the whole level."""

    window = "window"
    global_ = "global"


class RefinerInputOrder(str, Enum):
    """Channel order a refiner checkpoint expects: ours (coarse_fine) or the reference code's."""

    coarse_fine = "coarse_fine"
    fine_coarse = "fine_coarse"


class Optimizer(str, Enum):
    adamw = "adamw"
    sgd = "sgd"


class CoarseFrom(str, Enum):
    """Coarse map of a refiner training pair: the parent window (adjacent levels) or the whole image."""

    parent = "parent"
    whole = "whole"


class LabelsAt(str, Enum):
    """The label image's resolution when segmenting at a --resolution: the working one, or the input's."""

    working = "working"
    full = "full"


class ZarrFormat(int, Enum):
    v2 = 2  # OME-Zarr NGFF 0.4
    v3 = 3  # OME-Zarr NGFF 0.5


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


# --- checks shared by the settings below --------------------------------------------------------------
def _enum(kind: type[Enum], value: Any, option: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)  # type: ignore[attr-defined]
        raise UsageError(f"{option} {value!r}: expected one of {choices}") from None


def check_whole_number(value: Any, option: str, low: int, high: int) -> int:
    """A whole number (not a bool) within [low, high], for every command's counts, seeds and indices."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{option} {value!r}: expected a whole number from {low} to {high}")
    return value


def _finite(value: Any, option: str, low: float | None = None, high: float | None = None, *, open_low: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {value!r}: expected a number") from None
    if not math.isfinite(number):
        raise UsageError(f"{option} {value!r}: expected a finite number")
    if low is not None and (number <= low if open_low else number < low):
        raise UsageError(f"{option} {value!r}: must be {'above' if open_low else 'at least'} {low:g}")
    if high is not None and number > high:
        raise UsageError(f"{option} {value!r}: must be at most {high:g}")
    return number


def check_size(value: Any, option: str, low: int = MIN_INPUT_SIDE, high: int = MAX_INPUT_SIDE) -> tuple[int, int] | None:
    """An (h, w) pair of whole pixels within [low, high], or None."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {value!r}: expected HxW, e.g. 512x512") from None
    if not (low <= h <= high and low <= w <= high):
        raise UsageError(f"{option} {h}x{w}: each side must be from {low} to {high} pixels")
    return h, w


def check_points(value: Any, option: str = "--points") -> float | None:
    """A count (a whole number >= 1) or a fraction in [0, 1] of each level's pixels."""
    if value is None:
        return None
    number = _finite(value, option, 0.0)
    if number > 1 and number != int(number):
        raise UsageError(f"{option} {value!r}: expected a count (65536) or a fraction (0.5)")
    return number


def check_smooth_kernel(value: Any, option: str = "--smooth-kernel") -> int | None:
    if value is None:
        return None
    kernel = check_whole_number(value, option, 1, MAX_SMOOTH_KERNEL)
    if kernel % 2 == 0:
        raise UsageError(f"{option} {kernel}: must be odd (the median needs a centre pixel)")
    return kernel


def check_levels(value: Any, option: str = "--levels") -> int | tuple[int, ...] | None:
    """A level count, or each level's long side in pixels (strictly increasing), or None for automatic."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return check_whole_number(value, option, 1, MAX_LEVELS)
    sizes = tuple(value)
    if not sizes or len(sizes) > MAX_LEVELS:
        raise UsageError(f"{option}: expected 1 to {MAX_LEVELS} level sizes")
    for size in sizes:
        check_whole_number(size, option, 1, MAX_LEVEL_SIDE)
    if any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise UsageError(f"{option} {','.join(map(str, sizes))}: level sizes must increase, coarsest first")
    return sizes


def check_channel_stats(mean: Any, std: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """`--mean` and `--std` come together, one finite value per channel (or one for every channel), every
    std above zero."""
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together: give both or neither")
    if mean is None:
        return None, None
    mean_values = tuple(_finite(v, "--mean") for v in mean)
    std_values = tuple(_finite(v, "--std", 0.0, open_low=True) for v in std)
    if (len(mean_values) != len(std_values) and 1 not in (len(mean_values), len(std_values))) or not mean_values:
        raise UsageError(f"--mean has {len(mean_values)} values but --std has {len(std_values)}")
    return mean_values, std_values


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(value: Any) -> str:
    """auto (bf16 where the device computes it natively, else fp32), fp32, bf16 or fp16 (CUDA only)."""
    text = str(getattr(value, "value", value)).lower()
    if text not in PRECISIONS:
        raise UsageError(f"--precision {value!r}: expected one of {', '.join(PRECISIONS)}")
    return text


def check_device(value: Any, option: str = "--device") -> str:
    """The spelling of a device (auto, cpu, cuda, cuda:N); whether it exists is `devices.resolve_device`'s job."""
    text = str(value).strip().lower()
    if not DEVICE_PATTERN.match(text):
        raise UsageError(f"{option} {value!r}: expected auto, cpu, cuda or cuda:N")
    return text


def check_bands(value: Any, option: str = "--bands") -> tuple[int, ...] | None:
    """Band numbers counted from 1, as GDAL, rasterio and QGIS count them."""
    if value is None:
        return None
    bands = tuple(value)
    if not bands:
        raise UsageError(f"{option}: expected band numbers such as 3,2,1 (counted from 1)")
    for band in bands:
        check_whole_number(band, option, 1, 65535)
    return bands


def check_fast_patches(value: Any) -> float:
    """A count of windows (a whole number >= 1) or a fraction of a level's windows (0 < f < 1)."""
    number = _finite_number(value)
    if not (0 < number < 1 or (number >= 1 and number == int(number) and number <= 1_000_000)):
        raise UsageError(f"--fast-patches {value!r}: expected a count (1, 2, ...) or a fraction of each level's windows (0.25)")
    return int(number) if number >= 1 else number


def _finite_number(value: Any) -> float:
    """`value` as a finite float; NaN for anything else (which fails every range check)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def check_fast_levels(value: Any) -> int | str:
    """A count of levels (>= 1), counted from the finest, or "all"."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return "all"
    number = _finite_number(value)
    if not (number >= 1 and number == int(number) and number <= MAX_LEVELS):
        raise UsageError(f"--fast-levels {value!r}: expected a number of levels counted from the finest (1, 2, ...) or all")
    return int(number)


VALUE_RANGE_WORDS = ("auto", "dtype")


def check_value_range(value: Any, option: str = "--value-range") -> str | tuple[float, float] | None:
    """auto, dtype, or (MIN, MAX) with MIN < MAX, both finite; None: the bundle's range, else auto."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in VALUE_RANGE_WORDS:
            return text
        try:
            value = tuple(float(p) for p in text.split(","))
        except ValueError:
            raise UsageError(f"{option} {value!r}: expected auto, dtype or MIN,MAX such as 0,4095") from None
    values = tuple(float(v) for v in value)
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[0] >= values[1]:
        raise UsageError(f"{option} {value!r}: expected auto, dtype or MIN,MAX with MIN < MAX, such as 0,4095")
    return values


BACKGROUND_WORDS = ("nodata", "auto", "none")


def check_background(value: Any, option: str = "--background") -> str:
    """nodata, auto, none, or the path of an existing mask image (0 = background)."""
    text = str(value).strip()
    if text.lower() in BACKGROUND_WORDS:
        return text.lower()
    if not text or not Path(text).exists():
        raise UsageError(f"{option} {text!r}: expected nodata, auto, none or an existing mask image file")
    return text


def check_resolution(value: Any, option: str = "--resolution") -> PixelSize | str | None:
    """A pixel size with its unit (0.5um, 500nm, 1m, 0.0001deg), `full` (no resampling), or None (the
    bundle's resolution, else full)."""
    if value is None or isinstance(value, PixelSize):
        return value
    try:
        return parse_resolution(str(value))
    except ValueError as error:
        raise UsageError(f"{option} {error}") from None


# --- the settings objects -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSettings:
    """Which model: a bundle folder (default: the bundled one), or a segmenter file with its contract."""

    model: Path | None = None
    segmenter: str | None = None  # a segmenter file (.onnx, .pt2, .ts: models/sources/), or module:factory
    classes: str | None = None  # a class count or a class file
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    refiner: Path | None = None
    refiner_input_order: RefinerInputOrder | None = None
    # Model files are data: Python code named by a model (a module:factory) runs only when this is set.
    trust_model: bool = False

    def __post_init__(self) -> None:
        if self.model is not None and self.segmenter is not None:
            raise UsageError("give either --model or --segmenter, not both")
        if self.segmenter is not None and not str(self.segmenter).strip():
            raise UsageError("--segmenter: empty path")
        _set(self, "model", Path(self.model) if self.model is not None else None)
        _set(self, "refiner", Path(self.refiner) if self.refiner is not None else None)
        _set(self, "input_size", check_size(self.input_size, "--input-size"))
        mean, std = check_channel_stats(self.mean, self.std)
        _set(self, "mean", mean)
        _set(self, "std", std)
        if self.refiner_input_order is not None:
            _set(self, "refiner_input_order", _enum(RefinerInputOrder, self.refiner_input_order, "--refiner-input-order"))
        if self.classes is not None:
            text = str(self.classes).strip()
            if not text:
                raise UsageError("--classes: expected a class count or a class file")
            if text.isdigit():
                check_whole_number(int(text), "--classes", 2, MAX_CLASSES)
            _set(self, "classes", text)


@dataclass(frozen=True)
class InferenceSettings:
    """How to run the method: everything `segment` exposes except inputs, outputs and the model."""

    mode: Mode = Mode.magnet
    levels: int | tuple[int, ...] | None = None  # None: the bundle's default, else automatic
    points: float | None = None  # None: the bundle's default
    smooth_kernel: int | None = None  # None: the bundle's default
    # --mode fast: windows refined per level it chooses on, a count (>= 1) or a fraction (< 1); and the
    # levels it chooses on, counted from the finest ("all": the paper's). Coarser levels are refined in
    # full: on 2 held-out scenes this kept 90% of MagNet's gain over patches at 0.41x its time, where
    # choosing half of every level kept 77% at 0.37x (benchmarks/fast_tradeoff.py, benchmarks/README.md).
    # 0.25: a quarter of the finest level, what the old default 0.5 refined before its cutoff was
    # corrected (fast.py); on the validation scenes it kept 92% of MagNet's gain (0.15: 90%, 0.35: 94%).
    fast_patches: float = 0.25
    fast_levels: int | str = 1
    selection: Selection = Selection.window
    batch_size: int | None = None  # None: chosen for the device (devices.auto_batch_size)
    device: str = "auto"
    precision: str = "auto"  # auto, fp32, bf16 or fp16 (devices.compute_dtype)
    bands: tuple[int, ...] | None = None  # counted from 1
    value_range: str | tuple[float, float] | None = None  # auto, dtype, (min, max); None: the bundle's, else auto
    crop_size: tuple[int, int] | None = None
    read_threads: int | None = None  # None: chosen for the device (devices.auto_read_threads)
    resolution: PixelSize | str | None = None  # the working pixel size, "full"; None: the bundle's, else full
    background: str = "nodata"  # blank regions skipped: nodata, auto, none or a mask file (io/blank_mask.py)

    def __post_init__(self) -> None:
        _set(self, "mode", _enum(Mode, self.mode, "--mode"))
        _set(self, "selection", _enum(Selection, self.selection, "--selection"))
        _set(self, "levels", check_levels(self.levels))
        _set(self, "points", check_points(self.points))
        _set(self, "smooth_kernel", check_smooth_kernel(self.smooth_kernel))
        _set(self, "fast_patches", check_fast_patches(self.fast_patches))
        _set(self, "fast_levels", check_fast_levels(self.fast_levels))
        if self.batch_size is not None:
            check_whole_number(self.batch_size, "--batch-size", 1, MAX_BATCH)
        _set(self, "device", check_device(self.device))
        _set(self, "precision", check_precision(self.precision))
        _set(self, "bands", check_bands(self.bands))
        _set(self, "value_range", check_value_range(self.value_range))
        _set(self, "crop_size", check_size(self.crop_size, "crop size", 1, MAX_LEVEL_SIDE))
        if self.read_threads is not None:
            check_whole_number(self.read_threads, "read threads", 1, 64)
        _set(self, "resolution", check_resolution(self.resolution))
        _set(self, "background", check_background(self.background))

    def record(self) -> dict:
        """Every setting that shapes the labels, for the output's run metadata."""
        return {
            "mode": self.mode.value,
            "selection": self.selection.value,
            "levels": list(self.levels) if isinstance(self.levels, tuple) else self.levels,
            "points": self.points,
            "smooth_kernel": self.smooth_kernel,
            "fast_patches": self.fast_patches,
            "fast_levels": self.fast_levels,
            "precision": self.precision,
            "bands": list(self.bands) if self.bands else None,
            "value_range_option": list(self.value_range) if isinstance(self.value_range, tuple) else self.value_range,
            "crop_size": list(self.crop_size) if self.crop_size else None,
            "resolution_option": self.resolution.text() if isinstance(self.resolution, PixelSize) else self.resolution,
            "background": self.background,
        }


@dataclass(frozen=True)
class OutputSettings:
    """What `segment` writes beside the label image."""

    write_probabilities: bool = False
    write_uncertainty: bool = False
    preview: Path | None = None  # PNG overlay (a folder of them for several inputs)
    geotiff: Path | None = None  # tiled GeoTIFF of the mask (a folder of them for several inputs)
    vector: Path | None = None  # .geojson or .gpkg polygons of the mask (a folder of them for several inputs)
    vector_simplify: float = 0.0  # pixels: Douglas-Peucker tolerance of the polygons
    vector_min_area: float = 0.0  # pixels: smaller regions are dropped, smaller holes filled
    zarr_format: ZarrFormat = ZarrFormat.v3
    labels_at: LabelsAt = LabelsAt.working  # with a --resolution: labels at it, or at the input's full resolution

    def __post_init__(self) -> None:
        _set(self, "zarr_format", _enum(ZarrFormat, self.zarr_format, "--zarr-format"))
        _set(self, "labels_at", _enum(LabelsAt, self.labels_at, "--labels-at"))
        for name in ("preview", "geotiff", "vector"):
            value = getattr(self, name)
            if value is not None:
                if not str(value).strip():
                    raise UsageError(f"--{name}: empty path")
                _set(self, name, Path(value))
        for name in ("vector_simplify", "vector_min_area"):
            option = f"--{name.replace('_', '-')}"
            _set(self, name, _finite(getattr(self, name), option, 0.0))
            if getattr(self, name) and self.vector is None:
                raise UsageError(f"{option} shapes the polygons of --vector: give --vector FILE.geojson or FILE.gpkg too")


@dataclass(frozen=True)
class RunSettings:
    """How a command runs, whatever it computes."""

    progress: bool = True
    overwrite: bool = False
    resume: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard: tuple[int, int] | None = None  # (index from 0, count): this process's share of the units
    cluster: str | None = None  # a Dask scheduler address (tcp://HOST:PORT) or local:N

    @property
    def joins_partial(self) -> bool:
        """Whether this run may join an existing partial output of the same run (resuming it, or sharing
        it with other shards or workers) instead of refusing it."""
        return self.resume or self.shard is not None or self.cluster is not None

    def __post_init__(self) -> None:
        if self.overwrite and self.resume:
            raise UsageError("--overwrite and --resume contradict each other: give one")
        check_whole_number(self.max_pixels, "--max-pixels", 1, 10**15)
        if self.shard is not None:
            index, count = self.shard
            check_whole_number(count, "--shard COUNT", 1, 10**6)
            check_whole_number(index, "--shard INDEX", 0, 10**6)
            if index >= count:
                raise UsageError(f"--shard {index}/{count}: INDEX counts from 0 to COUNT - 1 ({count - 1})")
        if self.cluster is not None:
            if self.shard is not None:
                raise UsageError("--cluster and --shard split the work two ways: give one")
            from magnet_cli.distributed import parse_cluster

            parse_cluster(self.cluster)


@dataclass(frozen=True)
class TrainingSettings:
    """What both trainers share. Every field is recorded with the weights it makes."""

    epochs: int = 20
    steps: int = 100  # optimiser steps per epoch
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    val: str | None = None  # a validation dataset (folder or synth:SEED:COUNT:SIZE)
    ignore_index: int = 255
    name: str | None = None  # the bundle's name (default: the output folder's)
    # How images are read, as `segment` reads them (InferenceSettings), recorded in the bundle so that
    # `segment --model` reads the same way. None: the source bundle's (train-refiner --model), else the default.
    bands: tuple[int, ...] | None = None  # counted from 1
    value_range: str | tuple[float, float] | None = None  # auto, dtype or (min, max)

    def __post_init__(self) -> None:
        check_whole_number(self.epochs, "--epochs", 1, MAX_EPOCHS)
        check_whole_number(self.steps, "--steps", 1, MAX_STEPS)
        check_whole_number(self.batch_size, "--batch-size", 1, MAX_BATCH)
        _set(self, "lr", _finite(self.lr, "--lr", 0.0, 10.0, open_low=True))
        _set(self, "weight_decay", _finite(self.weight_decay, "weight decay", 0.0, 1.0))
        check_whole_number(self.seed, "--seed", 0, MAX_SEED)
        _set(self, "device", check_device(self.device))
        check_whole_number(self.ignore_index, "--ignore-index", 0, MAX_IGNORE_INDEX)
        if self.val is not None and not str(self.val).strip():
            raise UsageError("--val: empty dataset path")
        _set(self, "bands", check_bands(self.bands))
        _set(self, "value_range", check_value_range(self.value_range))


@dataclass(frozen=True)
class SegmenterTraining(TrainingSettings):
    """`train-segmenter`: a built-in architecture trained on windows of every scale level."""

    architecture: str = "small_unet"
    architecture_options: tuple[tuple[str, Any], ...] = ()
    segmenter: str | None = None  # package.module:factory, trained instead of `architecture`
    input_size: tuple[int, int] = (256, 256)
    classes: str | None = None  # default: the dataset's classes.json
    mean: tuple[float, ...] | None = None  # the segmenter sees (x - mean) / std, in training and in the bundle
    std: tuple[float, ...] | None = None
    optimizer: Optimizer = Optimizer.adamw
    val_windows: int = 32
    # A factory is Python code: it runs only when this is set (never recorded: it permits, it shapes nothing).
    trust_model: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _set(self, "input_size", check_size(self.input_size, "--input-size"))
        mean, std = check_channel_stats(self.mean, self.std)
        _set(self, "mean", mean)
        _set(self, "std", std)
        if self.segmenter is not None and not str(self.segmenter).strip():
            raise UsageError("--segmenter: empty path")
        _set(self, "optimizer", _enum(Optimizer, self.optimizer, "--optimizer"))
        check_whole_number(self.val_windows, "validation windows", 0, 100_000)


@dataclass(frozen=True)
class RefinerTraining(TrainingSettings):
    """`train-refiner`: the paper's refiner recipe over a frozen segmenter (DESIGN section 2)."""

    epochs: int = 50  # the paper's
    weight_decay: float = 5e-4
    momentum: float = 0.9
    milestones: tuple[int, ...] | None = None  # None: the paper's, scaled to epochs
    gamma: float = 0.1
    ohem: bool = False
    augment: bool = True
    coarse_from: CoarseFrom = CoarseFrom.parent
    crop: int | None = None
    val_pairs: int = 32
    architecture: str = REFERENCE  # models/refiner_names.py

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.architecture not in REFINER_ARCHITECTURES:
            raise UsageError(f"--refiner-arch {self.architecture!r}: expected one of {', '.join(REFINER_ARCHITECTURES)}")
        _set(self, "momentum", _finite(self.momentum, "momentum", 0.0, 1.0))
        _set(self, "gamma", _finite(self.gamma, "gamma", 0.0, 1.0, open_low=True))
        _set(self, "coarse_from", _enum(CoarseFrom, self.coarse_from, "--coarse-from"))
        if self.milestones is not None:
            marks = tuple(check_whole_number(m, "--milestones", 1, self.epochs - 1) if self.epochs > 1 else m for m in self.milestones)
            if self.epochs <= 1 and marks:
                raise UsageError("--milestones: one epoch has no room for an lr step")
            if list(marks) != sorted(set(marks)):
                raise UsageError(f"--milestones {','.join(map(str, marks))}: expected increasing epochs")
            _set(self, "milestones", marks)
        if self.crop is not None:
            check_whole_number(self.crop, "--crop", MIN_INPUT_SIDE, MAX_CROP)
        check_whole_number(self.val_pairs, "validation pairs", 0, 100_000)


# --- helpers --------------------------------------------------------------------------------------------
def _set(settings: object, name: str, value: Any) -> None:
    object.__setattr__(settings, name, value)  # frozen dataclasses normalise their own fields


Settings = TypeVar("Settings")


def build(kind: type[Settings], **values: Any) -> Settings:
    """A settings object from the given values, None meaning "the default": the CLI passes every option,
    and an option left out must not override a default that differs between commands."""
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"{kind.__name__} has no field(s) {', '.join(sorted(unknown))}")
    return kind(**{k: v for k, v in values.items() if v is not None})


def with_values(settings: Settings, **values: Any) -> Settings:
    """A copy with the given fields replaced, validated again."""
    return replace(settings, **values)  # type: ignore[type-var]
