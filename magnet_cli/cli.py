"""The `magnet` command line: parse options, build settings objects, call the library, render with rich.
No logic lives here; every option is declared once in `options.py`."""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any, Callable, List, Optional, Sequence

import typer
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from magnet_cli import options as O
from magnet_cli import settings as S
from magnet_cli.errors import MagnetError, MagnetWarning

# To a file or a pipe (a SLURM log, `| tee`), stdout is this many columns wide: rich would otherwise cut
# tables to 80 columns and wrap or truncate file names, so that a log could not tell which row is which
# file. Tables and lines then take their natural width (no padding to it).
UNTRUNCATED_WIDTH = 100_000


class StdoutConsole(Console):
    """stdout: the terminal's width in a terminal; unlimited (UNTRUNCATED_WIDTH) anywhere else, decided at
    each print, since stdout can be redirected after import (CliRunner, contextlib.redirect_stdout)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNTRUNCATED_WIDTH, size.height)


err = Console(stderr=True, highlight=False)
out = StdoutConsole(highlight=False)

INTERRUPTED_OUTPUT = "interrupted; no output was completed"
STOPPED_SEGMENT = (
    "stopped; nothing was published for the image being segmented, and its finished work is kept: "
    "re-run the same command with --resume to finish it"
)
# SIGTERM (SLURM's time limit, `kill`) and SIGHUP (a closed terminal) stop a run like Ctrl-C does, and
# exit 128 + the signal number as shells report it.
STOP_SIGNALS = ("SIGTERM", "SIGHUP")
INTERRUPTED_TRAINING = "interrupted; the last completed epoch's checkpoint is kept (continue with --resume)"


def _say(kind: str, style: str, message: str) -> None:
    """One line on stderr; the user's text is printed literally (no rich markup in paths or values)."""
    line = Text(f"{kind}: ", style=style)
    line.append(message)
    err.print(line, soft_wrap=True)


class MagnetGroup(TyperGroup):
    """Every error, the parser's included, ends as one red line and its exit code: no boxed panels."""

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None, **extra: Any) -> Any:
        from typer._click import exceptions as click_errors

        extra.pop("standalone_mode", None)
        try:
            # Without standalone mode an Exit raised by a command comes back as its code.
            code = super().main(args=args, prog_name=prog_name or "magnet", standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as error:
            error.ctx and typer.echo(error.ctx.get_help())
            sys.exit(0 if error.ctx is None else 2)
        except click_errors.ClickException as error:
            _say("error", "bold red", error.format_message())
            sys.exit(error.exit_code)
        except typer.Abort:
            _say("error", "bold red", "aborted")
            sys.exit(130)
        except typer.Exit as error:
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


class SeveralTruthsCommand(TyperCommand):
    """`--truth TA TB`: the values after --truth up to the next option all belong to it, as the README
    writes it (click options take one value each, so the text is rewritten to `--truth TA --truth TB`)."""

    def parse_args(self, ctx: Any, args: List[str]) -> List[str]:
        rewritten: List[str] = []
        taking = False
        for arg in args:
            if arg == "--truth":
                taking = True
                continue
            if taking and arg.startswith("-") and arg != "-":
                taking = False
            rewritten += ["--truth", arg] if taking else [arg]
        return super().parse_args(ctx, rewritten)


app = typer.Typer(
    name="magnet",
    cls=MagnetGroup,
    help="Segment gigapixel images with MagNet (progressive multi-scale refinement) in flat memory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(version: O.Version = False) -> None:
    """Segment gigapixel images with MagNet (progressive multi-scale refinement) in flat memory."""


def _run(action: Callable[[], Any], interrupted: str = INTERRUPTED_OUTPUT) -> Any:
    """User errors -> one red line and exit 2; warnings -> one yellow line; Ctrl-C -> exit 130."""

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, MagnetWarning):
            _say("warning", "bold yellow", str(message))
        else:
            original(message, category, filename, lineno, file, line)

    original = warnings.showwarning
    warnings.showwarning = show
    try:
        return action()
    except MagnetError as error:
        _say("error", "bold red", str(error))
        raise typer.Exit(2)
    except KeyboardInterrupt:
        _say("error", "bold red", interrupted)
        raise typer.Exit(130)
    finally:
        warnings.showwarning = original


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=Text(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(value if isinstance(value, Text) else Text(str(value)) for value in row))
    return table


def _print_json(value: Any) -> None:
    out.print_json(json.dumps(value, default=str))


# --- segment ---------------------------------------------------------------------------------------------
@app.command("segment")
def segment_command(
    inputs: O.Inputs,
    output: O.Output,
    model: O.Model = None,
    segmenter: O.Segmenter = None,
    classes: O.Classes = None,
    input_size: O.InputSize = None,
    mean: O.Mean = None,
    std: O.Std = None,
    refiner: O.Refiner = None,
    refiner_input_order: O.RefinerInputOrder = None,
    trust_model: O.TrustModel = False,
    mode: O.Mode = S.InferenceSettings.mode,
    levels: O.Levels = None,
    points: O.Points = None,
    smooth_kernel: O.SmoothKernel = None,
    fast_patches: O.FastPatches = S.InferenceSettings.fast_patches,
    fast_levels: O.FastLevels = str(S.InferenceSettings.fast_levels),
    selection: O.Selection = S.InferenceSettings.selection,
    batch_size: O.BatchSize = None,
    device: O.Device = O.DEVICE_DEFAULT,
    precision: O.Precision = S.InferenceSettings.precision,
    bands: O.Bands = None,
    value_range: O.ValueRange = None,
    resolution: O.Resolution = None,
    background: O.Background = S.InferenceSettings.background,
    write_probabilities: O.WriteProbabilities = False,
    write_uncertainty: O.WriteUncertainty = False,
    preview: O.Preview = None,
    geotiff: O.GeoTiff = None,
    vector: O.Vector = None,
    vector_simplify: O.VectorSimplify = S.OutputSettings.vector_simplify,
    vector_min_area: O.VectorMinArea = S.OutputSettings.vector_min_area,
    zarr_format: O.ZarrFormat = S.OutputSettings.zarr_format.value,
    labels_at: O.LabelsAt = S.OutputSettings.labels_at,
    max_pixels: O.MaxPixels = S.RunSettings.max_pixels,
    overwrite: O.Overwrite = False,
    resume: O.Resume = False,
    shard: O.Shard = None,
    cluster: O.Cluster = None,
    no_progress: O.NoProgress = False,
    json_output: O.Json = False,
    version: O.Version = False,
) -> None:
    """Segment images into OME-Zarr label images. OUTPUT is a .zarr for one input, a folder for several."""
    from magnet_cli.segmentation import segment

    def action():
        return segment(
            inputs,
            output,
            model=S.build(
                S.ModelSettings, model=model, segmenter=segmenter, classes=classes, input_size=input_size,
                mean=mean, std=std, refiner=refiner, refiner_input_order=refiner_input_order, trust_model=trust_model,
            ),
            inference=S.build(
                S.InferenceSettings, mode=mode, levels=levels, points=points, smooth_kernel=smooth_kernel,
                fast_patches=fast_patches, fast_levels=fast_levels, selection=selection, batch_size=batch_size, device=device, bands=bands,
                precision=precision, value_range=value_range, resolution=resolution, background=background,
            ),
            outputs=S.build(
                S.OutputSettings, write_probabilities=write_probabilities, write_uncertainty=write_uncertainty,
                preview=preview, geotiff=geotiff, vector=vector, vector_simplify=vector_simplify,
                vector_min_area=vector_min_area, zarr_format=zarr_format, labels_at=labels_at,
            ),
            run=S.build(
                S.RunSettings, progress=not no_progress, overwrite=overwrite, resume=resume, max_pixels=max_pixels,
                shard=shard, cluster=cluster,
            ),
        )

    results = _run(action, interrupted=STOPPED_SEGMENT)
    failed = [r for r in results if r.status == "failed"]
    if json_output:
        _print_json([r.to_dict() for r in results])
    else:
        rows = [
            (r.input, r.output, r.status, f"{r.height} x {r.width}" if r.status == "ok" else "", r.mode, r.windows, f"{r.seconds:.1f}")
            for r in results
        ]
        out.print(_table("magnet segment", ("input", "output", "status", "size", "mode", "windows", "seconds"), rows))
    for result in failed:
        _say("error", "bold red", result.error or f"{result.input}: failed")
    if failed:  # 1: some images failed and the others finished; 2: none could be segmented
        raise typer.Exit(1 if len(failed) < len(results) else 2)


# --- info -----------------------------------------------------------------------------------------------
@app.command("info")
def info_command(
    path: O.ImagePath = None,
    model: O.Model = None,
    json_output: O.Json = False,
    version: O.Version = False,
) -> None:
    """What an image is (size, dtype, pyramid, chunks, georeferencing) or, with --model, what a bundle is."""
    from magnet_cli.describe import info

    details = _run(lambda: info(path, model=model))
    for warning in details.get("warnings") or []:
        _say("warning", "bold yellow", f"{path}: {warning}")
    if json_output:
        _print_json(details)
        return
    title = str(path) if path is not None else str(model or "default model")
    table = Table(show_header=False, title=Text(title))
    for key, value in details.items():
        shown = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
        table.add_row(Text(str(key)), Text(shown))
    out.print(table)


# --- synth ----------------------------------------------------------------------------------------------
@app.command("synth")
def synth_command(
    outdir: O.SceneFolder,
    size: O.SceneSize = "4096",
    seed: O.Seed = 0,
    count: O.SceneCount = 1,
    format: O.SceneFormat = "tiff",
    blank: O.SceneBlank = 0.0,
    overwrite: O.Overwrite = False,
    no_progress: O.NoProgress = False,
    json_output: O.Json = False,
    version: O.Version = False,
) -> None:
    """Render deterministic synthetic benchmark scenes: images and ground-truth masks."""
    from magnet_cli.synthetic import synth

    pairs = _run(
        lambda: synth(
            outdir, size=size, seed=seed, count=count, format=format, blank=blank,  # type: ignore[arg-type]
            run=S.RunSettings(progress=not no_progress, overwrite=overwrite),
        )
    )
    if json_output:
        _print_json([{"image": str(image), "mask": str(mask)} for image, mask in pairs])
        return
    rows = [(seed + index, image, mask) for index, (image, mask) in enumerate(pairs)]
    out.print(_table(f"magnet synth: {outdir}", ("seed", "image", "mask"), rows))


# --- training -------------------------------------------------------------------------------------------
@app.command("train-segmenter")
def train_segmenter_command(
    data: O.Data,
    output: O.Output,
    architecture: O.Architecture = S.SegmenterTraining.architecture,
    segmenter: O.Segmenter = None,
    classes: O.Classes = None,
    input_size: O.InputSize = None,
    mean: O.Mean = None,
    std: O.Std = None,
    bands: O.Bands = None,
    value_range: O.ValueRange = None,
    trust_model: O.TrustModel = False,
    epochs: O.Epochs = None,
    steps: O.Steps = S.TrainingSettings.steps,
    batch_size: O.BatchSize = None,
    lr: O.LearningRate = S.TrainingSettings.lr,
    optimizer: O.OptimizerName = S.SegmenterTraining.optimizer,
    seed: O.Seed = 0,
    device: O.Device = O.DEVICE_DEFAULT,
    val: O.Val = None,
    ignore_index: O.IgnoreIndex = S.TrainingSettings.ignore_index,
    resume: O.Resume = False,
    overwrite: O.Overwrite = False,
    no_progress: O.NoProgress = False,
    json_output: O.Json = False,
    version: O.Version = False,
) -> None:
    """Train a built-in segmenter on windows of every scale level. OUTPUT becomes a model bundle."""
    from magnet_cli.train.segmenter import train_segmenter

    def action():
        training = S.build(
            S.SegmenterTraining, architecture=architecture, segmenter=segmenter, input_size=input_size, classes=classes,
            mean=mean, std=std, bands=bands, value_range=value_range, trust_model=trust_model, epochs=epochs,
            steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed, device=device, val=val,
            ignore_index=ignore_index,
        )
        run = S.RunSettings(progress=not no_progress, overwrite=overwrite, resume=resume)
        return train_segmenter(data, output, training=training, run=run)

    _print_training(_run(action, INTERRUPTED_TRAINING), "magnet train-segmenter", json_output)


@app.command("train-refiner")
def train_refiner_command(
    data: O.Data,
    output: O.Output,
    model: O.Model = None,
    segmenter: O.Segmenter = None,
    classes: O.Classes = None,
    input_size: O.InputSize = None,
    mean: O.Mean = None,
    std: O.Std = None,
    bands: O.Bands = None,
    value_range: O.ValueRange = None,
    trust_model: O.TrustModel = False,
    epochs: O.Epochs = None,
    steps: O.Steps = S.TrainingSettings.steps,
    batch_size: O.BatchSize = None,
    lr: O.LearningRate = S.TrainingSettings.lr,
    milestones: O.Milestones = None,
    ohem: O.Ohem = False,
    coarse_from: O.CoarseFrom = S.RefinerTraining.coarse_from,
    crop: O.Crop = None,
    refiner_arch: O.RefinerArch = None,
    seed: O.Seed = 0,
    device: O.Device = O.DEVICE_DEFAULT,
    val: O.Val = None,
    ignore_index: O.IgnoreIndex = S.TrainingSettings.ignore_index,
    resume: O.Resume = False,
    overwrite: O.Overwrite = False,
    no_progress: O.NoProgress = False,
    json_output: O.Json = False,
    version: O.Version = False,
) -> None:
    """Train the MagNet refiner over a frozen segmenter (paper recipe). OUTPUT becomes a complete bundle
    that keeps the source bundle's inference settings."""
    from magnet_cli.train.refiner import train_refiner

    def action():
        model_settings = S.build(
            S.ModelSettings, model=model, segmenter=segmenter, classes=classes, input_size=input_size, mean=mean, std=std,
            trust_model=trust_model,
        )
        training = S.build(
            S.RefinerTraining, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, milestones=milestones,
            ohem=ohem, coarse_from=coarse_from, crop=crop, architecture=refiner_arch, seed=seed, device=device, val=val, ignore_index=ignore_index,
            bands=bands, value_range=value_range,
        )
        run = S.RunSettings(progress=not no_progress, overwrite=overwrite, resume=resume)
        return train_refiner(data, output, model=model_settings, training=training, run=run)

    _print_training(_run(action, INTERRUPTED_TRAINING), "magnet train-refiner", json_output)


def _print_training(result: dict, title: str, json_output: bool) -> None:
    if json_output:
        _print_json(result)
        return
    history = result["history"]
    keys = [k for k in history[-1] if k not in ("val_on",)] if history else []
    rows = [[f"{r[k]:.4g}" if isinstance(r[k], float) else r[k] for k in keys] for r in history]
    out.print(_table(f"{title}: {result['output']}", keys, rows))


# --- evaluate -------------------------------------------------------------------------------------------
@app.command("evaluate", cls=SeveralTruthsCommand)
def evaluate_command(
    predicted: O.Predicted,
    truth: O.Truth,
    classes: O.Classes = None,
    model: O.Model = None,
    ignore_index: O.IgnoreIndex = S.TrainingSettings.ignore_index,
    boundary_tolerance: O.BoundaryTolerance = 2,
    no_progress: O.NoProgress = False,
    json_output: O.Json = False,
    version: O.Version = False,
) -> None:
    """Per-class IoU, mIoU, pixel accuracy, frequency-weighted IoU and boundary F-score, streamed."""
    from magnet_cli.evaluation import evaluate

    result = _run(
        lambda: evaluate(
            predicted, truth, classes=classes, model=model, ignore_index=ignore_index,
            boundary_tolerance=boundary_tolerance, run=S.RunSettings(progress=not no_progress),
        )
    )
    summary = result.to_dict()
    if json_output:
        _print_json(summary)
        return
    rows = [
        (row["class"], _percent(row["iou"]), _percent(row["boundary_f"]), row["true_pixels"]) for row in summary["per_class"]
    ]
    table = _table(
        f"magnet evaluate: {len(result.per_image)} mask(s), {summary['pixels']} scored pixels",
        ("class", "IoU", f"boundary F (±{boundary_tolerance} px)", "true pixels"),
        rows,
    )
    table.add_section()
    table.add_row(Text("mean", style="bold"), Text(_percent(summary["miou"]), style="bold"), Text(_percent(summary["boundary_f"]), style="bold"), "")
    out.print(table)
    out.print(
        Text(
            f"mIoU {_percent(summary['miou'])}  pixel accuracy {_percent(summary['pixel_accuracy'])}  "
            f"frequency-weighted IoU {_percent(summary['fw_iou'])}  boundary F {_percent(summary['boundary_f'])}"
        )
    )
    if summary["unsegmented_pixels"]:
        out.print(Text(f"{_percent(summary['unsegmented_share'])}% of the truth pixels were left as no data "
                       "(--background) and not scored"))


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


# --- benchmark ------------------------------------------------------------------------------------------
@app.command("benchmark")
def benchmark_command(
    output: O.Output,
    data: O.BenchmarkData = None,
    model: O.Model = None,
    segmenter: O.Segmenter = None,
    classes: O.Classes = None,
    input_size: O.InputSize = None,
    mean: O.Mean = None,
    std: O.Std = None,
    refiner: O.Refiner = None,
    refiner_input_order: O.RefinerInputOrder = None,
    bands: O.Bands = None,
    value_range: O.ValueRange = None,
    trust_model: O.TrustModel = False,
    modes: O.Modes = None,
    sizes: O.Sizes = None,
    batch_size: O.BatchSize = None,
    device: O.Device = O.DEVICE_DEFAULT,
    precision: O.Precision = S.InferenceSettings.precision,
    quick: O.Quick = False,
    no_peer: O.NoPeer = False,
    no_limit: O.NoLimit = False,
    slide_size: O.SlideSize = None,
    workdir: O.Workdir = None,
    cluster: O.Cluster = None,
    no_progress: O.NoProgress = False,
    json_output: O.Json = False,
    version: O.Version = False,
) -> None:
    """Accuracy, time and memory of every mode on the same images, plus scaling, limit and peer.
    OUTPUT is the folder for the JSON and Markdown reports and the plots."""
    from magnet_cli.bench import benchmark, markdown

    def action():
        return benchmark(
            data, output, modes=modes, sizes=sizes, quick=quick,
            model=S.build(
                S.ModelSettings, model=model, segmenter=segmenter, classes=classes, input_size=input_size, mean=mean,
                std=std, refiner=refiner, refiner_input_order=refiner_input_order, trust_model=trust_model,
            ),
            inference=S.build(
                S.InferenceSettings, batch_size=batch_size, device=device, precision=precision, bands=bands,
                value_range=value_range,
            ),
            peer=not no_peer, limit=not no_limit, slide_size=slide_size, workdir=workdir, run=S.RunSettings(progress=not no_progress, cluster=cluster),
            log=(lambda message: None) if json_output else (lambda message: err.print(Text(message))),
        )

    report = _run(action)
    if json_output:
        _print_json(report.to_dict())
        return
    out.print(Text(markdown(report)), soft_wrap=True)
    out.print(Text(f"written: {output / 'benchmark.json'}, {output / 'benchmark.md'}, " + ", ".join(report.plots)))


class _Stopped:
    """Which stop signal arrived, so the exit code can say it (130 stays Ctrl-C's)."""

    signal_number: int | None = None


# A stopped run must end: SLURM follows SIGTERM with SIGKILL after its grace period, and a run stuck in
# clean-up would be killed with its partial output in place. A SIGTERM'd run once joined its writer
# thread forever (fixed in io/background.py); should any other clean-up hang, this bounds the wait and
# prints every thread's stack to show where.
STOP_GRACE_SECONDS = 60


def _stop(signal_number: int, frame: Any) -> None:
    if _Stopped.signal_number is not None:
        return  # already stopping: a second signal must not cut the clean-up short
    _Stopped.signal_number = signal_number
    _exit_if_cleanup_hangs(signal_number)
    raise KeyboardInterrupt  # unwinds like Ctrl-C: writers abort, temporary pyramids are removed


def _exit_if_cleanup_hangs(signal_number: int) -> None:
    import threading

    def expire() -> None:
        import faulthandler
        import os

        _say("error", "bold red", f"clean-up after the stop signal took over {STOP_GRACE_SECONDS} s; exiting now")
        faulthandler.dump_traceback(all_threads=True)
        os._exit(128 + signal_number)

    timer = threading.Timer(STOP_GRACE_SECONDS, expire)
    timer.daemon = True  # a clean exit does not wait for it
    timer.start()


def main() -> None:
    """Console-script entry point."""
    import signal

    for name in STOP_SIGNALS:
        if hasattr(signal, name):  # SIGHUP does not exist on Windows
            signal.signal(getattr(signal, name), _stop)
    try:
        app()
    except SystemExit as exit:
        if _Stopped.signal_number is not None and exit.code == 130:
            raise SystemExit(128 + _Stopped.signal_number) from None
        raise


if __name__ == "__main__":
    main()
