"""README's "Walk-through: your ONNX model to a MagNet bundle" runs as written (issue 13 item 4): the shell
block between its markers is run by bash in a fresh folder, `magnet` and `python` being this checkout's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- walkthrough:start -->", "<!-- walkthrough:end -->"


def walkthrough(readme: str) -> str:
    """The bash block between the markers."""
    section = readme.split(START, 1)[1].split(END, 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no ```bash block between the walk-through markers"
    return block.group(1)


def run_script(script: str, folder: Path) -> subprocess.CompletedProcess:
    prelude = (
        "set -euo pipefail\n"
        f'magnet() {{ "{sys.executable}" -m magnet_cli.cli "$@"; }}\n'
        f'python() {{ "{sys.executable}" "$@"; }}\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(["bash", "-c", prelude + script], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_readme_walkthrough_runs_as_written(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    script = walkthrough((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "magnet train-refiner" in script and "--segmenter model.onnx" in script  # the section is the one meant
    done = run_script(script, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    spec = tomllib.loads((tmp_path / "my-bundle" / "model.toml").read_text())
    assert spec["segmenter"]["onnx"] == "model.onnx" and (tmp_path / "my-bundle" / "model.onnx").is_file()
    assert spec["mean"] == [0.5] * 3 and spec["std"] == [0.25] * 3 and spec["value_range"] == "dtype"
    assert [c["name"] for c in spec["classes"]][:2] == ["meadow", "water"]
    assert "mIoU" in done.stdout  # evaluate printed its scores

    from magnet_cli.io.labels import read_labels

    labels = read_labels(tmp_path / "slide.zarr")
    assert labels.shape == (256, 256) and int(labels.max()) < 6 and np.unique(labels).size >= 1


def test_a_broken_walkthrough_step_fails_the_run(tmp_path):
    # The test above must be able to fail: a command the CLI does not take stops the script.
    done = run_script("magnet train-refiner data -o x --no-such-option\necho reached\n", tmp_path)
    assert done.returncode != 0 and "reached" not in done.stdout
