"""Every `magnet` option, declared once: name, type, help. Commands stack these aliases.

Parsing lives here (text such as `512x512` or `0.485,0.456,0.406` into values); validation of ranges and
pairs lives in `settings.py`, which the library shares, so a shell user and a Python caller meet the same
rules. Defaults come from the settings objects where they have one, so a default is written once.
Where two commands mean different defaults by one option (`--epochs`: 20 for a segmenter, the paper's 50
for the refiner), the option's default is None and the command's settings object fills it in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from magnet_cli import settings as S
from magnet_cli.models.refiner_names import REFINER_ARCHITECTURES

# --- parsers: text -> values (a bad text is a usage error naming the option) -------------------------------


def parse_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """`512` or `512x384` (HxW) -> (512, 512) or (512, 384)."""
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected HxW, e.g. 512x512") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise typer.BadParameter(f"{text!r}: expected HxW, e.g. 512x512")
    return values[0], values[1]


def parse_numbers(text: Optional[str]) -> Optional[tuple[float, ...]]:
    """`0.485,0.456,0.406` -> a tuple of floats."""
    if text is None:
        return None
    try:
        return tuple(float(p) for p in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers such as 0.485,0.456,0.406") from None


def parse_whole_numbers(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """`3,2,1` -> (3, 2, 1)."""
    if text is None:
        return None
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated whole numbers such as 3,2,1") from None


def parse_levels(text: Optional[str]) -> Optional[int | tuple[int, ...]]:
    """`auto` or empty: automatic; `3`: a level count; `256,512,1024`: each level's long side."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    if "," not in text:
        try:
            return int(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r}: expected auto, a count (3) or sizes (256,512,1024)") from None
    return parse_whole_numbers(text)


def parse_number(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected a number") from None


def parse_names(text: Optional[str]) -> Optional[list[str]]:
    """`a,b` -> ["a", "b"]; `none` -> [] (nothing)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise typer.BadParameter(f"{text!r}: expected comma-separated names, or none")
    return names


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """`3/8` -> (3, 8): shard 3 (counted from 0) of 8."""
    if text is None:
        return None
    parts = text.split("/")
    try:
        index, count = (int(p) for p in parts)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected INDEX/COUNT, e.g. 0/4 (INDEX counts from 0)") from None
    return index, count


def parse_path(text: Optional[str]) -> Optional[Path]:
    """A path; an empty text is refused (click would read it as `.`, the current folder)."""
    if text is None:
        return None
    if not text.strip():
        raise typer.BadParameter("empty path")
    return Path(text)


def parse_paths(texts: Optional[List[str]]) -> Optional[List[Path]]:
    return None if texts is None else [parse_path(t) for t in texts]  # type: ignore[misc]


def _callback(parser):
    def convert(value):
        return parser(value)

    return convert


def _version(value: bool) -> None:
    if value:
        from magnet_cli import __version__

        typer.echo(f"magnet-cli {__version__}")
        raise typer.Exit()


# --- options every command has ---------------------------------------------------------------------------
Version = Annotated[
    bool,
    typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bars (they are off anyway when not a terminal).")]
Json = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary instead of tables.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when there is one), cpu, cuda or cuda:N.")]
DEVICE_DEFAULT = S.InferenceSettings.device
BatchSize = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size",
        help="Windows per model call (inference; default chosen for the device: 4 on CPU, 8-16 on a GPU by its "
        f"memory) or per optimiser step (training, default {S.TrainingSettings.batch_size}).",
        show_default=False,
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Model arithmetic: auto (bf16 where the device computes it natively: Ampere or later GPUs, CPUs "
        "with AMX/AVX512-BF16; else fp32), fp32, bf16, or fp16 (CUDA only).",
        callback=_callback(S.check_precision),
    ),
]

Shard = Annotated[
    Optional[str],
    typer.Option(
        "--shard",
        help="Do shard INDEX of COUNT (INDEX from 0, e.g. $SLURM_ARRAY_TASK_ID/$N) of the work into the one "
        "shared OUTPUT; the shard that finishes the last part publishes it.",
        callback=_callback(parse_shard), metavar="INDEX/COUNT", show_default=False,
    ),
]
Cluster = Annotated[
    Optional[str],
    typer.Option(
        "--cluster",
        help="Run the work as Dask distributed tasks: tcp://HOST:PORT (a running `dask scheduler`) or local:N "
        "(N worker processes here). Needs magnet-cli[dask].",
        metavar="ADDRESS", show_default=False,
    ),
]
MaxPixels = Annotated[
    int,
    typer.Option("--max-pixels", help="Refuse inputs that declare more pixels than this (forged or absurd headers)."),
]

# --- outputs ---------------------------------------------------------------------------------------------
Output = Annotated[
    str,
    typer.Option("-o", "--output", callback=_callback(parse_path), help="Where the command writes (see the command's description).", show_default=False),
]

# --- the model (ModelSettings) ---------------------------------------------------------------------------
Model = Annotated[
    Optional[str],
    typer.Option("--model", callback=_callback(parse_path), help="Model bundle folder (default: the bundled model, or $MAGNET_MODEL).", show_default=False),
]
Segmenter = Annotated[
    Optional[str],
    typer.Option(
        "--segmenter",
        help="A segmenter instead of a bundle, chosen by its suffix: .onnx (onnxruntime), .pt2 (torch.export), "
        ".ts (TorchScript), or package.module:factory.",
        show_default=False,
    ),
]
Classes = Annotated[
    Optional[str],
    typer.Option("--classes", help="Class count N, or a class file (JSON records or one name per line).", show_default=False),
]
InputSize = Annotated[
    Optional[str],
    typer.Option(
        "--input-size",
        help="Model input size HxW, e.g. 256 or 512x256 (default: the bundle's, or a fixed-size ONNX/.pt2 model's; "
        "train-segmenter: 256).",
        callback=_callback(parse_size),
        show_default=False,
        metavar="HxW",
    ),
]
Mean = Annotated[
    Optional[str],
    typer.Option(
        "--mean", help="Per-channel mean the segmenter expects, one per input channel in --bands order (or one for all), e.g. 0.485,0.456,0.406 (with --std).",
        callback=_callback(parse_numbers), show_default=False, metavar="M1,M2,..",
    ),
]
Std = Annotated[
    Optional[str],
    typer.Option(
        "--std", help="Per-channel standard deviation, e.g. 0.229,0.224,0.225 (with --mean).",
        callback=_callback(parse_numbers), show_default=False, metavar="S1,S2,..",
    ),
]
Refiner = Annotated[
    Optional[str],
    typer.Option("--refiner", callback=_callback(parse_path), help="Refiner checkpoint to use instead of the bundle's (ours or the reference's).", show_default=False),
]
RefinerInputOrder = Annotated[
    Optional[S.RefinerInputOrder],
    typer.Option("--refiner-input-order", help="Channel order of a --refiner checkpoint (reference checkpoints: fine_coarse).", show_default=False),
]

TrustModel = Annotated[
    bool,
    typer.Option("--trust-model", help="Allow a model to run Python code (a module:factory segmenter, a .pt2 archive torch unpickles). "
        "Model files are data otherwise."),
]

# --- inference (InferenceSettings) -----------------------------------------------------------------------
Mode = Annotated[S.Mode, typer.Option("--mode", help="magnet, fast (MagNet-Fast), patch or downsample.")]
Levels = Annotated[
    Optional[str],
    typer.Option(
        "--levels", help="auto, a level count (3) or each level's long side (256,512,1024) (default: the bundle's).",
        callback=_callback(parse_levels), show_default=False,
    ),
]
Points = Annotated[
    Optional[str],
    typer.Option(
        "--points", help="Points refined per level: a count (65536) or a fraction of its pixels (0.5) (default: the bundle's).",
        callback=_callback(parse_number), show_default=False,
    ),
]
SmoothKernel = Annotated[
    Optional[int],
    typer.Option("--smooth-kernel", help="Odd median-blur kernel of the refinement score (default: the bundle's).", show_default=False),
]
FastPatches = Annotated[
    float,
    typer.Option("--fast-patches", help="Windows refined per level in --mode fast, on the levels it chooses on "
                 "(--fast-levels): a count (3) or a fraction of the level's windows (0.1); the fine levels, "
                 f"chosen as they stream, refine about that many (default {S.InferenceSettings.fast_patches}).",
                 show_default=False),
]
FastLevels = Annotated[
    str,
    typer.Option("--fast-levels", help="Levels, counted from the finest, on which --mode fast chooses windows; "
                 "coarser levels are refined in full. 1: the finest only; all: every level after the "
                 "coarsest (the paper's MagNet-Fast).", metavar="N|all"),
]
Selection = Annotated[S.Selection, typer.Option("--selection", help="Where points are chosen: window (streaming) or global (whole level).")]
Bands = Annotated[
    Optional[str],
    typer.Option(
        "--bands", help="The bands the model sees, in order, one per model input channel, counted from 1 as in GDAL, "
        "e.g. 5,3,2 or 4,3,2,1 (default: the bundle's, else bands 1..N of an image with the model's N channels).",
        callback=_callback(parse_whole_numbers), show_default=False, metavar="B1,B2,..",
    ),
]

ValueRange = Annotated[
    Optional[str],
    typer.Option(
        "--value-range",
        help="Input values that map to the model's [0, 1]: MIN,MAX (e.g. 0,2047), dtype (the sample type's "
        "range) or auto (default unless the model bundle sets a range: for integer data wider than 8 bits, "
        "the file's MaxSampleValue, bit depth or GDAL statistics, else a 99.9th-percentile stretch).",
        callback=_callback(S.check_value_range), show_default=False, metavar="MIN,MAX|auto|dtype",
    ),
]

Resolution = Annotated[
    Optional[str],
    typer.Option(
        "--resolution",
        help="Segment at this pixel size, read from the input's fitting pyramid level: 0.5um (or 500nm) for "
        "microscopy, 1m (or 0.0001deg) in a GeoTIFF's map units, or full (no resampling). Default: the model "
        "bundle's resolution, else full. Needs an input that states its pixel size (see magnet info).",
        callback=_callback(S.check_resolution), show_default=False, metavar="SIZE|full",
    ),
]

Background = Annotated[
    str,
    typer.Option(
        "--background",
        help="Blank regions to skip and write as the no-data label (the top of the label type: 255, or 65535): "
        "nodata (the input's own no-data value and alpha 0), auto (also uniform glass and flat borders found "
        "on a thumbnail), none, or a mask image FILE at any size (0 = background, as QuPath/TIAToolbox export).",
        metavar="nodata|auto|none|FILE",
    ),
]

# --- segment's side outputs (OutputSettings) ------------------------------------------------------------
WriteProbabilities = Annotated[bool, typer.Option("--write-probabilities", help="Also store the class probabilities.")]
WriteUncertainty = Annotated[bool, typer.Option("--write-uncertainty", help="Also store the uncertainty map.")]
Preview = Annotated[
    Optional[str],
    typer.Option("--preview", callback=_callback(parse_path), help="Also write a PNG overlay of the mask on a thumbnail (.png; a folder for several inputs).", show_default=False),
]
GeoTiff = Annotated[
    Optional[str],
    typer.Option("--geotiff", callback=_callback(parse_path), help="Also write the mask as a tiled GeoTIFF (.tif; a folder for several inputs).", show_default=False),
]
Vector = Annotated[
    Optional[str],
    typer.Option(
        "--vector", callback=_callback(parse_path),
        help="Also write the mask as polygons, one per region per class: .geojson (QuPath) or .gpkg (QGIS); a folder "
        "for several inputs. Needs magnet-cli[gis].",
        show_default=False,
    ),
]
VectorSimplify = Annotated[
    float,
    typer.Option("--vector-simplify", help="Simplify the --vector polygons to this tolerance in pixels (0: exact pixel outlines).", metavar="PIXELS"),
]
VectorMinArea = Annotated[
    float,
    typer.Option("--vector-min-area", help="Drop --vector regions, and fill their holes, smaller than this many pixels.", metavar="PIXELS"),
]
ZarrFormat = Annotated[int, typer.Option("--zarr-format", help="3 (OME-Zarr NGFF 0.5) or 2 (NGFF 0.4).")]
LabelsAt = Annotated[
    S.LabelsAt,
    typer.Option(
        "--labels-at",
        help="With a --resolution: write the labels at it (working) or at the input's full resolution (full). "
        "Labels beside their OME-Zarr image always follow the image's levels.",
    ),
]

# --- training (TrainingSettings and its two kinds) ------------------------------------------------------
Epochs = Annotated[
    Optional[int],
    typer.Option(
        "--epochs",
        help=f"Epochs, one checkpoint each (train-segmenter: {S.SegmenterTraining.epochs}; train-refiner: "
        f"{S.RefinerTraining.epochs}, the paper's).",
        show_default=False,
    ),
]
Steps = Annotated[int, typer.Option("--steps", help="Optimiser steps per epoch.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Initial learning rate.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (training: weights and sampling; synth: the first scene).")]
Val = Annotated[Optional[str], typer.Option("--val", help="Validation dataset (folder or synth:SEED:COUNT:SIZE).", show_default=False)]
IgnoreIndex = Annotated[int, typer.Option("--ignore-index", help="Mask value that is neither trained on nor scored.")]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run: segment finishes its partial output (skipping finished images), "
        "the trainers continue from OUTPUT/checkpoint.pt.",
    ),
]
Architecture = Annotated[str, typer.Option("--architecture", help="Built-in segmenter architecture.")]
OptimizerName = Annotated[S.Optimizer, typer.Option("--optimizer", help="adamw or sgd.")]
Milestones = Annotated[
    Optional[str],
    typer.Option(
        "--milestones", help="Epochs at which the lr drops x0.1, e.g. 20,30,40,45 (default: the paper's, scaled).",
        callback=_callback(parse_whole_numbers), show_default=False,
    ),
]
Ohem = Annotated[bool, typer.Option("--ohem", help="Online hard example mining cross-entropy (the reference's loss).")]
CoarseFrom = Annotated[S.CoarseFrom, typer.Option("--coarse-from", help="Coarse map of a pair: parent (adjacent levels) or whole (reference code).")]
RefinerArch = Annotated[
    Optional[str],
    typer.Option("--refiner-arch", help=f"Refiner architecture to train: {', '.join(REFINER_ARCHITECTURES)} (default reference).", show_default=False),
]
Crop = Annotated[Optional[int], typer.Option("--crop", help="Train on random CROP x CROP squares of each pair.", show_default=False)]

# --- arguments ---------------------------------------------------------------------------------------------
Inputs = Annotated[
    List[str],
    typer.Argument(help="Images (TIFF, Zarr, OME-Zarr, PNG, JPEG), folders of them, @FILE (one path per line) or - (paths from stdin).", callback=_callback(parse_paths), metavar="IMAGE", show_default=False),
]
Predicted = Annotated[
    List[str],
    typer.Argument(help="Predicted masks (OME-Zarr, Zarr, TIFF, PNG) or one folder.", callback=_callback(parse_paths), metavar="MASK", show_default=False),
]
ImagePath = Annotated[
    Optional[str],
    typer.Argument(help="An image (TIFF, Zarr, OME-Zarr, PNG, JPEG).", callback=_callback(parse_path), metavar="[IMAGE]", show_default=False),
]
SceneFolder = Annotated[
    str,
    typer.Argument(help="Output folder: gets images/, masks/ and classes.json.", callback=_callback(parse_path), metavar="OUTDIR", show_default=False),
]
Data = Annotated[str, typer.Argument(help="Dataset folder (images/, masks/, classes.json) or synth:SEED:COUNT:SIZE.", metavar="DATA", show_default=False)]
BenchmarkData = Annotated[
    Optional[str],
    typer.Argument(help="Dataset folder (images/ + masks/) or synth:SEED:COUNT:SIZE (default: synth:9000:4:4096).", metavar="[DATA]", show_default=False),
]

# --- evaluate -------------------------------------------------------------------------------------------
Truth = Annotated[
    List[str],
    typer.Option("--truth", callback=_callback(parse_paths), help="Truth masks, one per prediction in the same order (--truth A B), or one folder."),
]
BoundaryTolerance = Annotated[int, typer.Option("--boundary-tolerance", help="Pixels a boundary may be off and still match.")]

# --- synth ----------------------------------------------------------------------------------------------
SceneSize = Annotated[
    str,
    typer.Option("--size", help="Scene size: 4096 or HxW.", callback=_callback(parse_size), metavar="HxW"),
]
SceneCount = Annotated[int, typer.Option("--count", help="Number of scenes.")]
SceneFormat = Annotated[str, typer.Option("--format", help="png (small scenes), tiff (tiled pyramid) or zarr.")]
SceneBlank = Annotated[
    float,
    typer.Option("--blank", help="Slide-like scenes: about this fraction empty glass around tissue islands (masked 255, no class).", min=0.0, max=0.99),
]

# --- benchmark ------------------------------------------------------------------------------------------
Modes = Annotated[
    Optional[str],
    typer.Option(
        "--modes", help="Comma-separated variants (default: all; none: only the scaling series).",
        callback=_callback(parse_names), show_default=False,
    ),
]
Sizes = Annotated[
    Optional[str],
    typer.Option(
        "--sizes", help="Image sizes of the scaling series, e.g. 2048,4096,8192 (none: no series).",
        callback=_callback(lambda t: () if t is not None and t.strip().lower() == "none" else parse_whole_numbers(t)),
        show_default=False,
    ),
]
Quick = Annotated[bool, typer.Option("--quick", help="Small scenes and sizes: a few minutes on a CPU.")]
NoPeer = Annotated[bool, typer.Option("--no-peer", help="Skip the MONAI baseline even when it is installed.")]
NoLimit = Annotated[bool, typer.Option("--no-limit", help="Skip the model-only limit measurement.")]
SlideSize = Annotated[
    Optional[int],
    typer.Option("--slide-size", help="Side of the slide-like scene run with and without --background auto (0 skips it; default 4096, 2048 with --quick).", show_default=False),
]
Workdir = Annotated[Optional[str], typer.Option("--workdir", callback=_callback(parse_path), help="Scratch folder for scenes and masks (default: OUTPUT/work).", show_default=False)]
