"""The project as every user outside this checkout gets it: a wheel, installed into a fresh venv.

Building the wheel takes seconds; installing torch and the scientific stack into the venv 70-160 s and
the segment run 10-75 s on a 2-core machine (the range is how busy it was), so module fixtures build and
install once for every test here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from magnet_cli.models.default import MODEL_ENV, default_model_dir, packaged_model_dir

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "images" / "scene_s42_0.tif"
BUNDLE_FILES = ["model.toml", "segmenter.pt", "segmenter.ts", "refiner.pt"]


def run(command: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command with no trace of this checkout in its environment; fail with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", MODEL_ENV, "VIRTUAL_ENV")}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the sources (the checkout's build/ may hold stale files)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "magnet_cli", source / "magnet_cli", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist", source])
    (built,) = (work / "dist").glob("magnet_cli-*.whl")
    return built


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the torch this suite runs with, then the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    # The exact build this suite runs on (2.13.0+cpu in CI): the local label keeps pip from choosing a
    # multi-GB CUDA build from the registry; pip finds the file as .ci/run's install does (find-links).
    run([python, "-m", "pip", "install", "--quiet", f"torch=={version('torch')}"])
    run([python, "-m", "pip", "install", "--quiet", wheel])
    return python


def test_default_model_dir_is_the_packaged_bundle_unless_magnet_model_names_another(monkeypatch, tmp_path):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert default_model_dir() == packaged_model_dir() == REPO / "magnet_cli" / "weights" / "default"
    assert all((default_model_dir() / name).is_file() for name in BUNDLE_FILES)
    monkeypatch.setenv(MODEL_ENV, str(tmp_path))
    assert default_model_dir() == tmp_path
    monkeypatch.setenv(MODEL_ENV, "")  # set but empty: as if unset
    assert default_model_dir() == packaged_model_dir()


def test_checkout_path_weights_default_still_leads_to_the_packaged_bundle():
    assert (REPO / "weights" / "default").resolve() == packaged_model_dir().resolve()


def test_wheel_ships_the_default_bundle(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"magnet_cli/weights/default/{name}" for name in BUNDLE_FILES} <= names


def test_installed_package_imports_from_site_packages_not_the_checkout(venv_python, tmp_path):
    done = run([venv_python, "-c", "import magnet_cli; print(magnet_cli.__file__)"], cwd=tmp_path)
    location = Path(done.stdout.strip())
    assert "site-packages" in location.parts
    assert not location.resolve().is_relative_to(REPO)


def test_installed_magnet_segments_the_example_with_the_packaged_model_from_outside_the_checkout(venv_python, tmp_path):
    magnet = venv_python.parent / "magnet"
    run([magnet, "segment", EXAMPLE, "-o", "out.zarr", "--no-progress"], cwd=tmp_path)
    labels = zarr.open_group(tmp_path / "out.zarr", mode="r")["0"]
    height, width = tifffile.TiffFile(EXAMPLE).series[0].shape[:2]
    assert labels.shape == (height, width)
    values = np.unique(labels[::16, ::16])
    assert values.max() < 6 and len(values) > 1  # the default bundle's six classes, not one flat fill
