"""The public Python API: every command is a plain function of `magnet_cli`, callable any number of times,
whatever submodules were imported before."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest
from skimage import io as skio

import magnet_cli

from tests.conftest import random_rgb

COMMAND_FUNCTIONS = ("segment", "info", "synth", "evaluate", "benchmark", "train_segmenter", "train_refiner")


def all_submodules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(magnet_cli.__path__, "magnet_cli.") if not m.name.endswith("__main__")]


def test_no_exported_name_is_also_a_submodule():
    names = {name.rsplit(".", 1)[-1] for name in all_submodules() if name.count(".") == 1}
    assert not names & set(magnet_cli.__all__), names & set(magnet_cli.__all__)


def test_every_command_is_a_function_after_every_submodule_is_imported(tmp_path):
    for name in all_submodules():
        importlib.import_module(name)
    for name in COMMAND_FUNCTIONS:
        assert inspect.isfunction(getattr(magnet_cli, name)), name
    image = tmp_path / "a.png"
    skio.imsave(image, random_rgb(40, 50), check_contrast=False)
    first, second = magnet_cli.info(image), magnet_cli.info(image)
    assert first == second and first["height"] == 40 and first["width"] == 50


def test_the_api_works_in_a_fresh_interpreter_in_any_import_order(tmp_path):
    # Fresh, so no earlier test has resolved the lazy names: import a submodule first, then call twice.
    image = tmp_path / "a.png"
    skio.imsave(image, random_rgb(40, 50), check_contrast=False)
    script = (
        "import magnet_cli.segmentation, magnet_cli.describe, magnet_cli.synthetic, magnet_cli.evaluation\n"
        "import magnet_cli\n"
        f"print(magnet_cli.info({str(image)!r})['width'], magnet_cli.info({str(image)!r})['height'])\n"
        "print(callable(magnet_cli.segment), callable(magnet_cli.synth), callable(magnet_cli.evaluate))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["50", "40", "True", "True", "True"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        magnet_cli.no_such_command  # noqa: B018
