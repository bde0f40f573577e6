"""The `magnet` command line: parse options, call the library, render with rich. No logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from magnet_cli.errors import MagnetError, UsageError

app = typer.Typer(
    name="magnet",
    help="Segment gigapixel images with MagNet (progressive multi-scale refinement) in flat memory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


INTERRUPTED_OUTPUT = "interrupted; no output was completed"
INTERRUPTED_TRAINING = "interrupted; the last completed epoch's checkpoint is kept (continue with --resume)"


def _run(action, interrupted: str = INTERRUPTED_OUTPUT):
    """Turn user errors into one red line and exit code 2, Ctrl-C into exit code 130."""
    try:
        return action()
    except MagnetError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _fail(interrupted, 130)


def _parse_size(text: Optional[str], option: str) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise UsageError(f"{option} {text}: expected HxW, e.g. 512x512") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise UsageError(f"{option} {text}: expected HxW, e.g. 512x512")
    return parts[0], parts[1]


def _parse_floats(text: Optional[str], option: str, count: int) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        values = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"{option} {text}: expected {count} comma-separated numbers") from None
    if len(values) != count:
        raise UsageError(f"{option} {text}: expected {count} comma-separated numbers")
    return values


def _parse_points(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--points {text}: expected a count (65536) or a fraction (0.5)") from None
    if value < 0 or (value > 1 and value != int(value)):
        raise UsageError(f"--points {text}: expected a count (65536) or a fraction (0.5)")
    return value


def _parse_bands(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"--bands {text}: expected band indices such as 0,1,2") from None


@app.command("segment")
def segment_command(
    inputs: List[Path] = typer.Argument(..., help="Images (TIFF, Zarr, OME-Zarr, PNG, JPEG) or folders of them."),
    output: Path = typer.Option(..., "-o", "--output", help="Output .zarr (one input) or folder (several)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model bundle folder (default: the bundled model)."),
    segmenter: Optional[str] = typer.Option(None, "--segmenter", help="TorchScript segmenter file (or module:factory)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class count N or a class file (names, colours)."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Segmenter input size HxW."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean for --segmenter, e.g. 0.485,0.456,0.406."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std for --segmenter."),
    refiner: Optional[Path] = typer.Option(None, "--refiner", help="Refiner checkpoint (ours or the reference's)."),
    refiner_input_order: Optional[str] = typer.Option(
        None, "--refiner-input-order", help="coarse_fine or fine_coarse (reference checkpoints: fine_coarse)."
    ),
    mode: str = typer.Option("magnet", "--mode", help="magnet, fast, patch or downsample."),
    levels: Optional[str] = typer.Option(None, "--levels", help="Level count (3) or level long sides (256,512,1024)."),
    points: Optional[str] = typer.Option(None, "--points", help="Points refined per level: count or fraction."),
    smooth_kernel: Optional[int] = typer.Option(None, "--smooth-kernel", help="Odd median-blur kernel of the score."),
    fast_patches: int = typer.Option(3, "--fast-patches", help="Windows refined per level in --mode fast."),
    selection: str = typer.Option("window", "--selection", help="Point selection: window (streaming) or global."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per segmenter/refiner call."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Bands to use as RGB for multi-band rasters, e.g. 3,2,1."),
    write_probabilities: bool = typer.Option(False, "--write-probabilities", help="Also store class probabilities."),
    write_uncertainty: bool = typer.Option(False, "--write-uncertainty", help="Also store the uncertainty map."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="PNG overlay of the mask on a thumbnail."),
    geotiff: Optional[Path] = typer.Option(None, "--geotiff", help="Also write the mask as a tiled GeoTIFF (input's georeferencing)."),
    zarr_format: int = typer.Option(3, "--zarr-format", help="3 (OME-Zarr NGFF 0.5) or 2 (NGFF 0.4)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Segment images into OME-Zarr label images."""
    from magnet_cli.pyramid import parse_levels
    from magnet_cli.segmentation import segment

    def action():
        return segment(
            inputs,
            output,
            model=model,
            segmenter=segmenter,
            classes=classes,
            input_size=_parse_size(input_size, "--input-size"),
            mean=_parse_floats(mean, "--mean", 3),  # type: ignore[arg-type]
            std=_parse_floats(std, "--std", 3),  # type: ignore[arg-type]
            refiner=refiner,
            refiner_input_order=refiner_input_order,
            mode=mode,
            levels=parse_levels(levels),
            points=_parse_points(points),
            smooth_kernel=smooth_kernel,
            fast_patches=fast_patches,
            selection=selection,
            batch_size=batch_size,
            device=device,
            bands=_parse_bands(bands),
            write_probabilities=write_probabilities,
            write_uncertainty=write_uncertainty,
            preview=preview,
            geotiff=geotiff,
            zarr_format=zarr_format,
            overwrite=overwrite,
            progress=not no_progress,
        )

    results = _run(action)
    if json_output:
        out.print_json(json.dumps([r.to_dict() for r in results]))
        return
    table = Table(title="magnet segment")
    for column in ("input", "output", "size", "mode", "windows", "seconds"):
        table.add_column(column)
    for r in results:
        table.add_row(r.input, r.output, f"{r.height} x {r.width}", r.mode, str(r.windows), f"{r.seconds:.1f}")
    out.print(table)


@app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="An image (TIFF, Zarr, OME-Zarr, PNG, JPEG)."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Size, dtype, pyramid levels, chunking and georeferencing of an image."""
    from magnet_cli.describe import info

    details = _run(lambda: info(path))
    if json_output:
        out.print_json(json.dumps(details, default=str))
        return
    table = Table(show_header=False, title=str(path))
    for key, value in details.items():
        table.add_row(key, json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value))
    out.print(table)


@app.command("synth")
def synth_command(
    outdir: Path = typer.Argument(..., help="Output folder: gets images/, masks/ and classes.json."),
    size: str = typer.Option("4096", "--size", help="Scene size: 4096 or HxW."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first scene; scene i uses seed + i."),
    count: int = typer.Option(1, "--count", help="Number of scenes."),
    fmt: str = typer.Option("tiff", "--format", help="png (small scenes), tiff (tiled pyramid) or zarr."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Render deterministic synthetic benchmark scenes: images and ground-truth masks."""
    from magnet_cli.synthetic import synth

    pairs = _run(
        lambda: synth(
            outdir,
            size=_parse_size(size, "--size"),  # type: ignore[arg-type]
            seed=seed,
            count=count,
            fmt=fmt,
            overwrite=overwrite,
            progress=not no_progress,
        )
    )
    if json_output:
        out.print_json(json.dumps([{"image": str(image), "mask": str(mask)} for image, mask in pairs]))
        return
    table = Table(title=f"magnet synth: {outdir}")
    for column in ("seed", "image", "mask"):
        table.add_column(column)
    for index, (image, mask) in enumerate(pairs):
        table.add_row(str(seed + index), str(image), str(mask))
    out.print(table)


@app.command("train-segmenter")
def train_segmenter_command(
    data: str = typer.Argument(..., help="Dataset folder (images/, masks/, classes.json) or synth:SEED:COUNT:SIZE."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: becomes a model bundle plus checkpoint."),
    architecture: str = typer.Option("small_unet", "--architecture", help="Built-in segmenter architecture."),
    input_size: str = typer.Option("256", "--input-size", help="Segmenter input size HxW."),
    epochs: int = typer.Option(20, "--epochs", help="Epochs (one checkpoint each)."),
    steps: int = typer.Option(100, "--steps", help="Optimiser steps per epoch."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights and window sampling."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation dataset (folder or synth:SEED:COUNT:SIZE)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class count N or a class file (default: DATA/classes.json)."),
    ignore_index: int = typer.Option(255, "--ignore-index", help="Mask value that is not trained on."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/checkpoint.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Train a built-in segmenter on windows of every scale level; write a model bundle."""
    from magnet_cli.train.segmenter import train_segmenter

    result = _run(
        lambda: train_segmenter(
            data,
            output,
            architecture=architecture,
            input_size=_parse_size(input_size, "--input-size"),  # type: ignore[arg-type]
            epochs=epochs,
            steps_per_epoch=steps,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            seed=seed,
            device=device,
            resume=resume,
            overwrite=overwrite,
            val_data=val,
            classes=classes,
            ignore_index=ignore_index,
            progress=not no_progress,
        ),
        INTERRUPTED_TRAINING,
    )
    _print_training(result, "magnet train-segmenter", json_output)


@app.command("train-refiner")
def train_refiner_command(
    data: str = typer.Argument(..., help="Dataset folder (images/, masks/, classes.json) or synth:SEED:COUNT:SIZE."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: becomes a complete model bundle."),
    model: Optional[Path] = typer.Option(None, "--model", help="Bundle whose segmenter is kept frozen."),
    segmenter: Optional[Path] = typer.Option(None, "--segmenter", help="TorchScript segmenter file instead of --model."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input size HxW of a --segmenter file."),
    epochs: int = typer.Option(50, "--epochs", help="Epochs (one checkpoint each)."),
    steps: int = typer.Option(100, "--steps", help="Optimiser steps per epoch."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Initial SGD learning rate."),
    milestones: Optional[str] = typer.Option(None, "--milestones", help="Epochs of lr x0.1 (default: paper's, scaled)."),
    ohem: bool = typer.Option(False, "--ohem", help="Online hard example mining cross-entropy."),
    coarse_from: str = typer.Option(
        "parent", "--coarse-from", help="Coarse map of a pair: parent (adjacent levels) or whole (reference code)."
    ),
    crop: Optional[int] = typer.Option(None, "--crop", help="Train on random CROP x CROP squares of each pair."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights and pair sampling."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation dataset (folder or synth:SEED:COUNT:SIZE)."),
    ignore_index: int = typer.Option(255, "--ignore-index", help="Mask value that is not trained on."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/checkpoint.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Train the MagNet refiner over a frozen segmenter (paper recipe); write a complete bundle."""
    from magnet_cli.train.refiner import train_refiner

    def action():
        if (model is None) == (segmenter is None):
            raise UsageError("give exactly one of --model BUNDLE or --segmenter FILE")
        marks = None
        if milestones is not None:
            try:
                marks = [int(p) for p in milestones.split(",") if p.strip()]
            except ValueError:
                raise UsageError(f"--milestones {milestones}: expected epochs such as 20,30,40,45") from None
        return train_refiner(
            data,
            model if model is not None else segmenter,  # type: ignore[arg-type]
            output,
            epochs=epochs,
            steps_per_epoch=steps,
            batch_size=batch_size,
            lr=lr,
            milestones=marks,
            ohem=ohem,
            coarse_source=coarse_from,
            crop=crop,
            input_size=_parse_size(input_size, "--input-size"),
            seed=seed,
            device=device,
            resume=resume,
            overwrite=overwrite,
            val_data=val,
            ignore_index=ignore_index,
            progress=not no_progress,
        )

    _print_training(_run(action, INTERRUPTED_TRAINING), "magnet train-refiner", json_output)


@app.command("evaluate")
def evaluate_command(
    predicted: List[Path] = typer.Argument(..., help="Predicted masks (OME-Zarr, Zarr, TIFF, PNG) or one folder."),
    truth: List[Path] = typer.Option(..., "--truth", help="Truth masks in the same order, or one folder (or dataset)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class count N or a class file."),
    model: Optional[Path] = typer.Option(None, "--model", help="Take the classes of this bundle."),
    ignore_index: int = typer.Option(255, "--ignore-index", help="Truth value that is not scored."),
    tolerance: int = typer.Option(2, "--boundary-tolerance", help="Pixels a boundary may be off and still match."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
) -> None:
    """Per-class IoU, mIoU, pixel accuracy, frequency-weighted IoU and boundary F-score, streamed."""
    from magnet_cli.evaluation import evaluate

    result = _run(
        lambda: evaluate(
            predicted, truth, classes=classes, model=model, ignore_index=ignore_index, tolerance=tolerance,
            progress=not no_progress,
        )
    )
    summary = result.to_dict()
    if json_output:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"magnet evaluate: {len(result.per_image)} mask(s), {summary['pixels']} scored pixels")
    for column in ("class", "IoU", f"boundary F (±{tolerance} px)", "true pixels"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in summary["per_class"]:
        table.add_row(row["class"], _percent(row["iou"]), _percent(row["boundary_f"]), str(row["true_pixels"]))
    table.add_section()
    table.add_row("[bold]mean", f"[bold]{_percent(summary['miou'])}", f"[bold]{_percent(summary['boundary_f'])}", "")
    out.print(table)
    out.print(
        f"mIoU {_percent(summary['miou'])}  pixel accuracy {_percent(summary['pixel_accuracy'])}  "
        f"frequency-weighted IoU {_percent(summary['fw_iou'])}  boundary F {_percent(summary['boundary_f'])}"
    )


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


@app.command("benchmark")
def benchmark_command(
    data: Optional[str] = typer.Argument(
        None, help="Dataset folder (images/ + masks/) or synth:SEED:COUNT:SIZE (default: synth:9000:4:4096)."
    ),
    output: Path = typer.Option(Path("benchmark-results"), "-o", "--output", help="Folder for JSON, Markdown and plots."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model bundle (default: the bundled one)."),
    modes: Optional[str] = typer.Option(None, "--modes", help="Comma-separated variants (default: all; none: skip)."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Scaling sizes, e.g. 2048,4096,8192 (0 for none)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows per model call."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda."),
    quick: bool = typer.Option(False, "--quick", help="Small scenes and sizes: a few minutes on a CPU."),
    no_peer: bool = typer.Option(False, "--no-peer", help="Skip the MONAI baseline even when installed."),
    no_limit: bool = typer.Option(False, "--no-limit", help="Skip the model-only limit measurement."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Scratch folder for scenes and masks (default: OUTPUT/work)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Accuracy, time and memory of every mode on the same images, plus scaling, limit and peer."""
    from magnet_cli.bench import DEFAULT_VARIANTS, benchmark, markdown

    def action():
        if modes is None:
            variants = list(DEFAULT_VARIANTS)
        elif modes.strip() == "none":  # the scaling series alone
            variants = []
        else:
            variants = [m.strip() for m in modes.split(",") if m.strip()]
        try:
            size_list = None if sizes is None else [int(s) for s in sizes.split(",") if s.strip() and int(s) > 0]
        except ValueError:
            raise UsageError(f"--sizes {sizes}: expected sizes such as 2048,4096,8192") from None
        return benchmark(
            data, output, model=model, variants=variants, sizes=size_list, batch_size=batch_size, device=device,
            quick=quick, peer=not no_peer, limit=not no_limit, workdir=workdir, progress=not no_progress,
            log=(lambda message: None) if json_output else (lambda message: err.print(message, highlight=False)),
        )

    report = _run(action)
    if json_output:
        out.print_json(json.dumps(report.to_dict()))
        return
    out.print(markdown(report), highlight=False, soft_wrap=True)
    out.print(f"written: {output / 'benchmark.json'}, {output / 'benchmark.md'}, " + ", ".join(report.plots))


def _print_training(result: dict, title: str, json_output: bool) -> None:
    if json_output:
        out.print_json(json.dumps(result))
        return
    table = Table(title=f"{title}: {result['output']}")
    keys = [k for k in result["history"][-1] if k not in ("val_on",)] if result["history"] else []
    for key in keys:
        table.add_column(key)
    for record in result["history"]:
        table.add_row(*(f"{record[k]:.4g}" if isinstance(record[k], float) else str(record[k]) for k in keys))
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
