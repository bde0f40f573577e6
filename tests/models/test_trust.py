"""Model files are data: Python named by a model runs only with --trust-model, and every path in
model.toml stays inside the bundle folder (issue 10, defect 9)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.classes import default_classes
from magnet_cli.errors import ModelError
from magnet_cli.evaluation import resolve_classes
from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.bundle import MODEL_FILE, BundleSpec, SegmenterSpec, bundle_from_parts, describe_bundle, load_bundle

from tests.conftest import tiny_bundle
from tests.test_cli import assert_clean_failure

runner = CliRunner()
FACTORY_MODULE = "magnet_trust_probe"  # a module written per test whose import leaves a marker file


@pytest.fixture
def factory_module(tmp_path, monkeypatch) -> Path:
    """An importable module whose import and whose factory call each write a marker: the proof that
    magnet-cli ran it."""
    marker = tmp_path / "ran"
    (tmp_path / f"{FACTORY_MODULE}.py").write_text(
        "from pathlib import Path\n"
        "from magnet_cli.models.builtin import SmallUNet\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "def build(num_classes):\n"
        f"    Path({str(marker)!r}).write_text('called')\n"
        "    return SmallUNet(num_classes, widths=(8, 16))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, FACTORY_MODULE, raising=False)
    return marker


def factory_bundle(directory: Path, factory: str) -> Path:
    """A bundle whose segmenter is `factory`, with weights that fit the probe module's net."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(SmallUNet(3, widths=(8, 16)).state_dict(), directory / "segmenter.pt")
    BundleSpec("f", (32, 32), tuple(default_classes(3)), SegmenterSpec(factory=factory, weights="segmenter.pt")).write(directory)
    return directory


def test_bundle_factory_is_refused_without_trust_model(tmp_path, factory_module):
    directory = factory_bundle(tmp_path / "b", f"{FACTORY_MODULE}:build")
    with pytest.raises(ModelError) as caught:
        load_bundle(directory)
    message = str(caught.value)
    assert str(directory / MODEL_FILE) in message and "--trust-model" in message and "\n" not in message
    assert not factory_module.exists()  # not even imported


def test_bundle_factory_naming_os_exit_does_not_end_the_process(tmp_path):
    directory = factory_bundle(tmp_path / "b", "os:_exit")
    with pytest.raises(ModelError, match="--trust-model"):
        load_bundle(directory)


def test_bundle_factory_runs_with_trust_model(tmp_path, factory_module):
    bundle = load_bundle(factory_bundle(tmp_path / "b", f"{FACTORY_MODULE}:build"), trust_model=True)
    assert bundle.num_classes == 3 and factory_module.read_text() == "called"


def test_segmenter_factory_spec_is_refused_without_trust_model(factory_module):
    spec = f"{FACTORY_MODULE}:build"
    with pytest.raises(ModelError) as caught:
        bundle_from_parts(spec, default_classes(3), (32, 32), None)
    assert spec in str(caught.value) and "--trust-model" in str(caught.value)
    assert not factory_module.exists()
    assert bundle_from_parts(spec, default_classes(3), (32, 32), None, trust_model=True).num_classes == 3


def test_describing_a_factory_bundle_and_reading_its_classes_run_nothing(tmp_path, factory_module):
    directory = factory_bundle(tmp_path / "b", f"{FACTORY_MODULE}:build")
    info = describe_bundle(directory)
    assert info["segmenter"]["kind"] == "factory" and info["num_classes"] == 3
    assert info["input_channels"] is None  # not stated by the bundle, and the factory is not run to ask it
    assert [c.name for c in resolve_classes(None, directory, [], 255)] == [c.name for c in default_classes(3)]
    assert not factory_module.exists()


def test_describing_a_factory_bundle_digests_its_weights_without_the_factory(tmp_path, factory_module):
    directory = factory_bundle(tmp_path / "b", f"{FACTORY_MODULE}:build")
    described = describe_bundle(directory)["segmenter"]["sha256"]
    loaded = load_bundle(directory, trust_model=True)
    from magnet_cli.models.bundle import segmenter_digest

    assert described == segmenter_digest(loaded.segmenter.module)


# --- paths stay inside the bundle ---------------------------------------------------------------------------
def saved(directory: Path) -> Path:
    from magnet_cli.models.bundle import save_bundle

    b = tiny_bundle()
    return save_bundle(directory, "tiny", b.classes, b.segmenter.module, "small_unet", (64, 64), b.refiner,
                       architecture_options={"widths": [8, 16]})


def edit(directory: Path, old: str, new: str) -> None:
    toml = directory / MODEL_FILE
    text = toml.read_text()
    assert old in text, text
    toml.write_text(text.replace(old, new))


OUTSIDE = ["../segmenter.pt", "/etc/shadow", "sub/../../x.pt"]


@pytest.mark.parametrize("value", OUTSIDE)
@pytest.mark.parametrize("key, line", [
    ("segmenter.weights", 'weights = "segmenter.pt"'),
    ("segmenter.torchscript_export", 'torchscript_export = "segmenter.ts"'),
    ("refiner.weights", 'weights = "refiner.pt"'),
])
def test_model_toml_paths_outside_the_bundle_are_refused(tmp_path, key, line, value):
    directory = saved(tmp_path / "b")
    edit(directory, line, line.split("=")[0] + f"= {value!r}".replace("'", '"'))
    with pytest.raises(ModelError) as caught:
        BundleSpec.read(directory)
    message = str(caught.value)
    assert key in message and str(directory / MODEL_FILE) in message and "\n" not in message


def test_a_torchscript_path_outside_the_bundle_is_refused(tmp_path):
    directory = tmp_path / "b"
    directory.mkdir()
    BundleSpec("t", (32, 32), tuple(default_classes(3)), SegmenterSpec(torchscript="/etc/shadow")).write(directory)
    with pytest.raises(ModelError, match="segmenter.torchscript"):
        load_bundle(directory)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_a_symlink_out_of_the_bundle_is_refused(tmp_path):
    directory = saved(tmp_path / "b")
    outside = tmp_path / "elsewhere.pt"
    (directory / "refiner.pt").rename(outside)
    (directory / "refiner.pt").symlink_to(outside)
    with pytest.raises(ModelError, match="refiner.weights"):
        load_bundle(directory)
    with pytest.raises(ModelError, match="refiner.weights"):
        describe_bundle(directory)


def test_paths_in_subfolders_of_the_bundle_are_fine(tmp_path):
    directory = saved(tmp_path / "b")
    (directory / "weights").mkdir()
    (directory / "refiner.pt").rename(directory / "weights" / "refiner.pt")
    edit(directory, 'weights = "refiner.pt"', 'weights = "weights/./refiner.pt"')
    assert load_bundle(directory).refiner is not None


# --- through the CLI: one red line, exit 2 ---------------------------------------------------------------
@pytest.fixture
def png(tmp_path) -> Path:
    import numpy as np
    import skimage.io as skio

    path = tmp_path / "scene.png"
    skio.imsave(path, np.zeros((40, 40, 3), np.uint8), check_contrast=False)
    return path


def segment(*args) -> object:
    return runner.invoke(app, ["segment", *map(str, args), "--no-progress", "--device", "cpu"], catch_exceptions=False)


def test_segment_with_an_unknown_model_toml_key_is_one_line(tmp_path, png):
    directory = saved(tmp_path / "b")
    edit(directory, "points =", "colour = 3\npoints =")
    assert_clean_failure(segment(png, "-o", tmp_path / "o.zarr", "--model", directory), "unknown key 'colour'", MODEL_FILE)
    assert not (tmp_path / "o.zarr").exists()


def test_segment_with_a_factory_bundle_needs_trust_model(tmp_path, png, factory_module):
    directory = factory_bundle(tmp_path / "b", f"{FACTORY_MODULE}:build")
    assert_clean_failure(segment(png, "-o", tmp_path / "o.zarr", "--model", directory), "--trust-model", MODEL_FILE)
    assert not factory_module.exists()


def test_segment_with_a_factory_spec_needs_trust_model(tmp_path, png, factory_module):
    result = segment(png, "-o", tmp_path / "o.zarr", "--segmenter", "os:_exit", "--classes", "3", "--input-size", "32")
    assert_clean_failure(result, "--trust-model", "os:_exit")


def test_info_of_a_factory_bundle_runs_nothing(tmp_path, factory_module):
    directory = factory_bundle(tmp_path / "b", f"{FACTORY_MODULE}:build")
    result = runner.invoke(app, ["info", "--model", str(directory), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not factory_module.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    """A pickle can run code when loaded; weights_only admits tensors and plain containers only."""
    import re

    package = Path(__file__).resolve().parents[2] / "magnet_cli"
    calls = [
        (path.name, call) for path in package.rglob("*.py")
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()) if "weights_only=True" not in call
    ]
    assert calls == []


def test_a_bundle_with_non_finite_weights_is_never_written(tmp_path):
    from magnet_cli.models.bundle import save_bundle

    b = tiny_bundle()
    with torch.no_grad():
        next(b.refiner.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(ModelError, match="refiner's weight .* is not finite"):
        save_bundle(tmp_path / "b", "tiny", b.classes, b.segmenter.module, "small_unet", (64, 64), b.refiner,
                    architecture_options={"widths": [8, 16]})
    assert not (tmp_path / "b").exists()
