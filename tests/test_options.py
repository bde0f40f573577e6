"""Every option declared once and validated where it is declared: one line and exit 2 for each bad value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from skimage import io as skio
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.errors import UsageError
from magnet_cli.settings import InferenceSettings, ModelSettings, RefinerTraining, SegmenterTraining, build

from tests.conftest import random_rgb

runner = CliRunner()


def command_options(group=None) -> dict[str, dict[str, tuple]]:
    """option flag -> command -> (type, default, help, is_flag, multiple, required), read from the click app."""
    group = group or typer.main.get_command(app)
    table: dict[str, dict[str, tuple]] = {}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            if param.param_type_name != "option":
                continue
            signature = (repr(param.type_descriptor.annotation), repr(param.default), param.help, param.is_flag, param.multiple, param.required)
            for flag in param.opts:
                table.setdefault(flag, {})[name] = signature
    return table


def drift(group=None) -> dict:
    return {flag: by_command for flag, by_command in command_options(group).items() if len(set(by_command.values())) > 1}


def test_every_shared_option_has_one_type_default_and_help():
    assert not drift()


def test_the_option_walk_sees_drift(monkeypatch):
    # The walk above must be able to fail: give one command's --device another default and watch it.
    group = typer.main.get_command(app)
    device = next(p for p in group.commands["segment"].params if "--device" in p.opts)  # type: ignore[attr-defined]
    monkeypatch.setattr(device, "default", "cpu")
    assert set(drift(group)) == {"--device"}


def test_shared_options_appear_in_every_command_that_needs_them():
    options = command_options()
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    for flag in ("--json", "--version"):
        assert set(options[flag]) == commands, flag
    for flag in ("--device", "--batch-size"):
        assert {"segment", "train-segmenter", "train-refiner", "benchmark"} <= set(options[flag]), flag
    assert set(options["--device"]) and {d[1] for d in options["--device"].values()} == {"'auto'"}


@pytest.mark.parametrize("command", ["segment", "info", "synth", "train-segmenter", "train-refiner", "evaluate", "benchmark"])
def test_dash_h_and_version_work_on_every_command(command):
    helped = runner.invoke(app, [command, "-h"])
    assert helped.exit_code == 0 and "Usage: magnet " + command in helped.output
    versioned = runner.invoke(app, [command, "--version"])
    assert versioned.exit_code == 0 and re.fullmatch(r"magnet-cli \d+\.\d+\.\d+\s*", versioned.output)


def test_root_version():
    from magnet_cli import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"magnet-cli {__version__}"


# --- bad values: one line, exit 2, the user's text printed literally --------------------------------------
@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    skio.imsave(path, random_rgb(96, 96), check_contrast=False)
    return path


def one_red_line(result) -> str:
    message = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, message)
    assert "Traceback" not in message and "\n" not in message and "╭" not in message, message
    assert message.startswith("error: "), message
    return message


SEGMENT_BAD = [
    (["--levels", "100000"], "--levels"),
    (["--levels", "0"], "--levels"),
    (["--levels", "512,256"], "--levels"),
    (["--levels", "8"], "--levels 8"),  # a 96 x 96 image has at most 7 levels
    (["--points", "inf"], "--points"),
    (["--points", "nan"], "--points"),
    (["--points", "-1"], "--points"),
    (["--points", "1.5"], "--points"),
    (["--smooth-kernel", "1001"], "--smooth-kernel"),
    (["--smooth-kernel", "4"], "--smooth-kernel"),
    (["--input-size", "100000"], "--input-size"),
    (["--input-size", "8"], "--input-size"),
    (["--input-size", "abc"], "--input-size"),
    (["--selection", "foo"], "--selection"),
    (["--mode", "turbo"], "--mode"),
    (["--refiner-input-order", ""], "--refiner-input-order"),
    (["--mean", "0.5,0.5,0.5"], "--mean and --std"),
    (["--std", "0.2,0.2,0.2"], "--mean and --std"),
    (["--mean", "0.5,0.5,0.5", "--std", "0,0,0"], "--std"),
    (["--mean", "0.5,0.5", "--std", "0.2,0.2,0.2"], "--mean"),
    (["--mean", "nan,0,0", "--std", "1,1,1"], "--mean"),
    (["--fast-patches", "-2"], "--fast-patches"),
    (["--fast-patches", "0"], "--fast-patches"),
    (["--fast-levels", "0"], "--fast-levels"),
    (["--fast-levels", "most"], "--fast-levels"),
    (["--fast-levels", "1.5"], "--fast-levels"),
    (["--fast-levels", "inf"], "--fast-levels"),
    (["--fast-patches", "inf"], "--fast-patches"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "x"], "--batch-size"),
    (["--device", "gpu"], "--device"),
    (["--device", "cuda:7"], "--device"),
    (["--zarr-format", "4"], "--zarr-format"),
    (["--bands", "0,1,2"], "--bands"),
    (["--bands", "a,b"], "--bands"),
    (["--vector", "v.geojson", "--vector-simplify", "-1"], "--vector-simplify"),
    (["--vector", "v.geojson", "--vector-min-area", "nan"], "--vector-min-area"),
    (["--vector-min-area", "5"], "--vector-min-area"),  # shapes nothing without --vector
    (["--classes", "100000"], "--classes"),
    (["--classes", ""], "--classes"),
    (["--model", ""], "empty path"),
    (["--segmenter", "x.ts", "--model", "m"], "--model or --segmenter"),
]


@pytest.mark.parametrize("extra,fragment", SEGMENT_BAD, ids=[" ".join(a) for a, _ in SEGMENT_BAD])
def test_segment_refuses_each_bad_value_in_one_line(bundle_dir, scene, tmp_path, extra, fragment):
    out = tmp_path / "o.zarr"
    result = runner.invoke(app, ["segment", str(scene), "-o", str(out), "--model", str(bundle_dir), "--no-progress", *extra])
    assert fragment in one_red_line(result)
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "output,side,fragment",
    [
        ("o.tif", [], "-o"),
        ("o.png", [], "-o"),
        ("o.zarr", ["--preview", "p.jpg"], "--preview"),
        ("o.zarr", ["--geotiff", "g.png"], "--geotiff"),
        ("o.zarr", ["--vector", "v.shp"], "--vector"),
        ("", [], "empty path"),
    ],
)
def test_outputs_get_the_format_their_suffix_names_or_are_refused(bundle_dir, scene, tmp_path, output, side, fragment):
    side = [str(tmp_path / s) if s.endswith((".jpg", ".png")) else s for s in side]
    target = str(tmp_path / output) if output else ""
    result = runner.invoke(app, ["segment", str(scene), "-o", target, "--model", str(bundle_dir), "--no-progress", *side])
    assert fragment in one_red_line(result)
    assert not list(tmp_path.iterdir())


TRAIN_BAD = [
    ("train-segmenter", ["--lr", "-1"], "--lr"),
    ("train-segmenter", ["--lr", "nan"], "--lr"),
    ("train-segmenter", ["--seed", "-1"], "--seed"),
    ("train-segmenter", ["--input-size", "8"], "--input-size"),
    ("train-segmenter", ["--epochs", "0"], "--epochs"),
    ("train-segmenter", ["--steps", "0"], "--steps"),
    ("train-segmenter", ["--optimizer", "adam"], "--optimizer"),
    ("train-segmenter", ["--ignore-index", "70000"], "--ignore-index"),
    ("train-segmenter", ["--resume", "--overwrite"], "--overwrite and --resume"),
    ("train-refiner", ["--milestones", "0"], "--milestones"),
    ("train-refiner", ["--milestones", "30,20"], "--milestones"),
    ("train-refiner", ["--epochs", "10", "--milestones", "10"], "--milestones"),
    ("train-refiner", ["--crop", "5"], "--crop"),
    ("train-refiner", ["--coarse-from", "sideways"], "--coarse-from"),
    ("train-refiner", ["--mean", "0.5,0.5,0.5"], "--mean and --std"),
]


@pytest.mark.parametrize("command,extra,fragment", TRAIN_BAD, ids=[f"{c} {' '.join(a)}" for c, a, _ in TRAIN_BAD])
def test_trainers_refuse_each_bad_value_in_one_line(tmp_path, command, extra, fragment):
    out = tmp_path / "bundle"
    result = runner.invoke(app, [command, "synth:0:1:64", "-o", str(out), "--no-progress", *extra])
    assert fragment in one_red_line(result)
    assert not out.exists()


OTHER_BAD = [
    (["synth", "{tmp}/s", "--count", "0"], "--count"),
    (["synth", "{tmp}/s", "--seed", "-1"], "--seed"),
    (["synth", "{tmp}/s", "--size", "0"], "--size"),
    (["synth", "{tmp}/s", "--format", "gif"], "--format"),
    (["evaluate", "{scene}", "--truth", ""], "empty path"),
    (["evaluate", "{scene}", "--truth", "{scene}", "--classes", "100000"], "classes"),
    (["evaluate", "{scene}", "--truth", "{scene}", "--ignore-index", "70000"], "--ignore-index"),
    (["evaluate", "{scene}", "--truth", "{scene}", "--boundary-tolerance", "-1"], "--boundary-tolerance"),
    (["info", "{tmp}/[peer].tif"], "[peer].tif"),  # rich markup must not eat the user's text
    (["info", "{tmp}/synth:a:b:.tif"], "synth:a:b:.tif"),  # nor turn :a: into an emoji
    (["segment"], "Missing argument"),
    (["benchmark", "-o", "/proc/x", "--modes", "none", "--sizes", "none"], "/proc/x"),
    (["benchmark", "-o", "{tmp}/s", "--sizes", "-512"], "--sizes"),
    (["benchmark", "-o", "{tmp}/s", "--sizes", "0"], "--sizes"),
    (["benchmark", "-o", "{tmp}/s", "--modes", "turbo"], "turbo"),
]


@pytest.mark.parametrize("args,fragment", OTHER_BAD, ids=[" ".join(a) for a, _ in OTHER_BAD])
def test_other_commands_refuse_bad_values_in_one_line(scene, tmp_path, args, fragment):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{scene}", str(scene)) for a in args]
    result = runner.invoke(app, args)
    assert fragment in one_red_line(result)
    assert not (tmp_path / "s").exists()


# --- the same rules for library callers -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,values",
    [
        (InferenceSettings, {"points": float("inf")}),
        (InferenceSettings, {"levels": 0}),
        (InferenceSettings, {"smooth_kernel": 1001}),
        (InferenceSettings, {"mode": "turbo"}),
        (ModelSettings, {"mean": (0.5, 0.5, 0.5)}),
        (SegmenterTraining, {"lr": float("nan")}),
        (RefinerTraining, {"milestones": (0,)}),
    ],
)
def test_library_callers_meet_the_same_checks(kind, values):
    with pytest.raises(UsageError):
        kind(**values)


@pytest.mark.parametrize(
    "text, expected", [("3", 3), ("256,512,1024", (256, 512, 1024)), ("", None), ("auto", None), (None, None)]
)
def test_parse_levels(text, expected):
    from magnet_cli.options import parse_levels

    assert parse_levels(text) == expected


def test_build_leaves_out_none_so_command_defaults_hold():
    assert build(RefinerTraining, epochs=None).epochs == 50
    assert build(SegmenterTraining, epochs=None).epochs == 20
    assert build(InferenceSettings, fast_patches=None).fast_patches == 0.25
    assert build(SegmenterTraining, batch_size=None).batch_size == 8
