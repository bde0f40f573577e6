"""The model options (issue 13 item 2): every command that runs or trains a segmenter takes the same
`--segmenter --classes --input-size --mean --std --bands --value-range`, and each reaches the settings
object the library is called with."""

from __future__ import annotations

import dataclasses
import types

import pytest
import typer
from typer.testing import CliRunner

from magnet_cli.cli import app

from tests.test_options import command_options

runner = CliRunner()

MODEL_COMMANDS = ("segment", "train-segmenter", "train-refiner", "benchmark")
# option -> (the text given, the settings field it must land in, the value there)
MODEL_OPTIONS = {
    "--segmenter": (["pkg.mod:factory"], "segmenter", "pkg.mod:factory"),
    "--classes": (["5"], "classes", "5"),
    "--input-size": (["64x48"], "input_size", (64, 48)),
    "--mean": (["0.1,0.2,0.3", "--std", "0.4,0.5,0.6"], "mean", (0.1, 0.2, 0.3)),
    "--std": (["0.4,0.5,0.6", "--mean", "0.1,0.2,0.3"], "std", (0.4, 0.5, 0.6)),
    "--bands": (["3,2,1"], "bands", (3, 2, 1)),
    "--value-range": (["0,2047"], "value_range", (0.0, 2047.0)),
}
# Where each command's library function lives and the arguments the command needs besides the option.
CALLS = {
    "segment": ("magnet_cli.segmentation", "segment", ["in.png", "-o", "out.zarr"], []),
    "train-segmenter": ("magnet_cli.train.segmenter", "train_segmenter", ["data", "-o", "out"], {"history": [], "output": "out"}),
    "train-refiner": ("magnet_cli.train.refiner", "train_refiner", ["data", "-o", "out"], {"history": [], "output": "out"}),
    "benchmark": ("magnet_cli.bench", "benchmark", ["-o", "out", "--json"], types.SimpleNamespace(to_dict=dict)),
}


def test_every_model_command_declares_every_model_option():
    options = command_options()
    missing = {flag: sorted(set(MODEL_COMMANDS) - set(options.get(flag, {}))) for flag in MODEL_OPTIONS}
    assert not {flag: commands for flag, commands in missing.items() if commands}


def test_the_declaration_check_sees_a_missing_option(monkeypatch):
    # The check above must be able to fail: drop --bands from train-refiner and watch it.
    group = typer.main.get_command(app)
    command = group.commands["train-refiner"]  # type: ignore[attr-defined]
    monkeypatch.setattr(command, "params", [p for p in command.params if "--bands" not in p.opts])
    options = command_options(group)
    assert "train-refiner" not in options["--bands"]


def settings_given(monkeypatch, command: str, args: list[str]) -> list:
    """The settings objects the command called its library function with."""
    module_name, function, required, returned = CALLS[command]
    module = __import__(module_name, fromlist=[function])
    seen: list = []

    def spy(*positional, **keywords):
        seen.extend(v for v in [*positional, *keywords.values()] if dataclasses.is_dataclass(v))
        return returned

    monkeypatch.setattr(module, function, spy)
    result = runner.invoke(app, [command, *required, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return seen


@pytest.mark.parametrize("flag", MODEL_OPTIONS)
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_model_option_reaches_the_settings(monkeypatch, command, flag):
    given, field, value = MODEL_OPTIONS[flag]
    extra = ["--trust-model"] if flag == "--segmenter" else []
    seen = settings_given(monkeypatch, command, [flag, *given, *extra])
    assert any(getattr(s, field, None) == value for s in seen), (command, flag, seen)


def test_an_option_left_out_reaches_no_settings(monkeypatch):
    # The test above must be able to fail: without --bands no settings object holds (3, 2, 1).
    seen = settings_given(monkeypatch, "train-refiner", ["--model", "m"])
    assert not any(getattr(s, "bands", None) == (3, 2, 1) for s in seen)
