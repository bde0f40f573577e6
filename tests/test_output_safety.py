"""Issue 10, output safety: magnet-cli replaces only what it wrote, never writes into its inputs, leaves
no partial output that looks finished, and stops cleanly on SIGTERM / SIGHUP, a full disk or a read-only
side-output folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from skimage import io as skio

from magnet_cli.io.labels import magnet_marker
from magnet_cli.io.partial_store import is_in_use
from tests.conftest import random_rgb
from tests.test_cli import assert_clean_failure, assert_label_image, segment


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    skio.imsave(path, random_rgb(150, 200), check_contrast=False)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: the test of 'left byte-identical'."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. --overwrite replaces only what magnet-cli wrote ----------------------------------------------------
def test_overwrite_refuses_foreign_folder(bundle_dir, png, tmp_path):
    target = tmp_path / "p"
    target.mkdir()
    (target / "zarr.json").write_text('{"zarr_format":3,"node_type":"group","attributes":{}}')
    (target / "thesis.txt").write_text("x")
    before = snapshot(target)
    result = segment(bundle_dir, png, "-o", target, "--overwrite", "--mode", "downsample")
    assert_clean_failure(result, str(target), "not written by magnet-cli")
    assert snapshot(target) == before


def test_overwrite_refuses_any_non_empty_folder_and_a_file(bundle_dir, png, tmp_path):
    folder = tmp_path / "f.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert_clean_failure(segment(bundle_dir, png, "-o", folder, "--overwrite"), str(folder))
    assert (folder / "notes.txt").read_text() == "mine"
    file = tmp_path / "g.zarr"
    file.write_text("mine")
    assert_clean_failure(segment(bundle_dir, png, "-o", file, "--overwrite"), str(file))
    assert file.read_text() == "mine"


def test_overwrite_refuses_a_magnet_output_holding_a_users_file(bundle_dir, png, tmp_path):
    out = tmp_path / "o.zarr"
    assert segment(bundle_dir, png, "-o", out, "--mode", "downsample").exit_code == 0
    (out / "thesis.txt").write_text("x")
    before = snapshot(out)
    assert_clean_failure(segment(bundle_dir, png, "-o", out, "--overwrite", "--mode", "downsample"), "thesis.txt")
    assert snapshot(out) == before


def test_overwrite_replaces_magnets_own_outputs(bundle_dir, png, tmp_path):
    out, tif, preview, vector = tmp_path / "o.zarr", tmp_path / "o.tif", tmp_path / "o.png", tmp_path / "o.gpkg"
    args = ("-o", out, "--geotiff", tif, "--preview", preview, "--vector", vector, "--mode", "downsample")
    assert segment(bundle_dir, png, *args).exit_code == 0
    result = segment(bundle_dir, png, *args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert_label_image(out, 150, 200)
    marker = dict(zarr.open_group(str(out), mode="r").attrs)["magnet"]
    assert marker["format"] == "magnet-cli-labels" and marker["state"] == "complete"


@pytest.mark.parametrize("option, name", [("--geotiff", "user.tif"), ("--preview", "user.png"), ("--vector", "user.geojson")])
def test_overwrite_refuses_a_side_file_magnet_did_not_write(bundle_dir, png, tmp_path, option, name):
    side = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(side, np.zeros((8, 8), np.uint8))
    elif name.endswith(".png"):
        skio.imsave(side, np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    else:
        side.write_text('{"type": "FeatureCollection", "features": []}\n')
    before = side.read_bytes()
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, png, "-o", out, option, side, "--overwrite"), name, "not written by magnet-cli")
    assert side.read_bytes() == before and not out.exists()


# --- 2. no output is an input or inside one ----------------------------------------------------------------
def zarr_image(path: Path) -> Path:
    zarr.create_array(str(path), data=random_rgb(96, 96), chunks=(32, 32, 3))
    return path


def test_output_may_not_be_the_input_even_with_overwrite(bundle_dir, tmp_path):
    source = zarr_image(tmp_path / "s.zarr")
    before = snapshot(source)
    assert_clean_failure(segment(bundle_dir, source, "-o", source, "--overwrite"), "s.zarr", "input")
    assert snapshot(source) == before


@pytest.mark.parametrize("option", ["--geotiff", "--preview"])
def test_side_output_may_not_be_the_input(bundle_dir, tmp_path, option):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, random_rgb(96, 96), photometric="rgb")
    before = source.read_bytes()
    name = "in.tif" if option == "--geotiff" else "in.png"
    if option == "--preview":  # a PNG input, previewed onto itself
        source = tmp_path / "in.png"
        skio.imsave(source, random_rgb(96, 96), check_contrast=False)
        before = source.read_bytes()
    result = segment(bundle_dir, source, "-o", tmp_path / "o.zarr", option, source, "--overwrite")
    assert_clean_failure(result, name, "input")
    assert source.read_bytes() == before and not (tmp_path / "o.zarr").exists()


def test_output_through_a_symlink_to_the_input_is_refused(bundle_dir, tmp_path):
    source = zarr_image(tmp_path / "s.zarr")
    link = tmp_path / "link.zarr"
    link.symlink_to(source)
    before = snapshot(source)
    assert_clean_failure(segment(bundle_dir, source, "-o", link, "--overwrite"), "input")
    assert snapshot(source) == before


def test_output_inside_an_input_is_refused(bundle_dir, tmp_path):
    source = zarr_image(tmp_path / "s.zarr")
    assert_clean_failure(segment(bundle_dir, source, "-o", source / "masks.zarr"), "inside the input")
    assert not (source / "masks.zarr").exists()


def test_labels_inside_a_zarr_array_that_is_not_an_ome_zarr_image_are_refused(bundle_dir, tmp_path):
    """IMAGE.zarr/labels/NAME is the NGFF place for labels only in an OME-Zarr image (test_label_placement.py)."""
    source = zarr_image(tmp_path / "s.zarr")
    result = segment(bundle_dir, source, "-o", source / "labels" / "tissue")
    assert_clean_failure(result, "inside the input")
    assert not (source / "labels").exists()


def test_side_output_into_a_read_only_folder_fails_before_any_work(bundle_dir, png, tmp_path, monkeypatch):
    from magnet_cli import pipeline

    folder = tmp_path / "ro"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real_access(p, mode, **kw))
    monkeypatch.setattr(pipeline.Engine, "run", lambda *a, **k: pytest.fail("segmented before checking outputs"))
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, png, "-o", out, "--preview", folder / "p.png"), "ro", "not writable")
    assert not out.exists()


# --- 3. partial outputs: unique names, never mistaken for results -----------------------------------------
def test_partial_store_has_a_unique_name_and_no_ngff_metadata(tmp_path):
    from magnet_cli.classes import default_classes
    from magnet_cli.io.labels import LabelWriter

    first = LabelWriter(tmp_path / "o.zarr", 64, 64, default_classes(2))
    second = LabelWriter(tmp_path / "o.zarr", 64, 64, default_classes(2))
    try:
        assert first.partial != second.partial and str(os.getpid()) not in first.partial.name
        attributes = dict(zarr.open_group(str(first.partial), mode="r").attrs)
        assert "ome" not in attributes and "multiscales" not in attributes
        assert attributes["magnet"]["state"] == "partial"
    finally:
        first.abort()
        second.abort()


def test_interrupted_leftovers_are_reported_and_removed_only_with_overwrite(bundle_dir, png, tmp_path):
    from magnet_cli.classes import default_classes
    from magnet_cli.io.labels import LabelWriter

    out = tmp_path / "o.zarr"
    leftover = LabelWriter(out, 64, 64, default_classes(2)).partial  # an interrupted run: never finalised
    assert_clean_failure(segment(bundle_dir, png, "-o", out), leftover.name, "interrupted")
    assert leftover.exists() and not out.exists()
    result = segment(bundle_dir, png, "-o", out, "--overwrite", "--mode", "downsample")
    assert result.exit_code == 0, result.output
    assert not leftover.exists() and [p.name for p in tmp_path.glob("o.zarr*")] == ["o.zarr"]


def test_a_partial_store_is_refused_as_an_input(bundle_dir, tmp_path):
    from magnet_cli.classes import default_classes
    from magnet_cli.io.labels import LabelWriter

    partial = LabelWriter(tmp_path / "o.zarr", 64, 64, default_classes(2)).partial
    assert_clean_failure(segment(bundle_dir, partial, "-o", tmp_path / "x.zarr"), "unfinished")


def test_check_finished_refuses_a_partial_store(tmp_path):
    from magnet_cli.classes import default_classes
    from magnet_cli.errors import InputError
    from magnet_cli.io.labels import LabelWriter, check_finished

    writer = LabelWriter(tmp_path / "o.zarr", 64, 64, default_classes(2))
    with pytest.raises(InputError, match="unfinished"):
        check_finished(writer.partial)
    with pytest.raises(InputError, match="unfinished"):
        check_finished(writer.partial / "0")  # an array of it, too
    writer.write(0, 0, np.zeros((64, 64), np.uint8))
    writer.finalize()
    check_finished(writer.path)  # a finished output passes


# --- 6. disk full ------------------------------------------------------------------------------------------
def test_disk_full_while_writing_labels_is_one_line_and_publishes_nothing(bundle_dir, png, tmp_path, monkeypatch):
    from magnet_cli.io import chunk_buffer

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunk_buffer.ChunkAssembler, "write", full)
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, png, "-o", out), "o.zarr", "No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["scene.png"]


def test_a_failing_side_output_publishes_nothing(bundle_dir, png, tmp_path, monkeypatch):
    from magnet_cli import segmentation
    from magnet_cli.errors import OutputError

    def broken(*args, **kwargs):
        raise OutputError("cannot write p.png: Read-only file system")

    monkeypatch.setattr(segmentation, "write_preview", broken)
    out = tmp_path / "o.zarr"
    assert_clean_failure(segment(bundle_dir, png, "-o", out, "--preview", tmp_path / "p.png"), "p.png")
    assert [p.name for p in tmp_path.iterdir()] == ["scene.png"]


# --- 4. SIGTERM / SIGHUP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_resume(bundle_dir, tmp_path, signum, code):
    source = tmp_path / "big.tif"  # striped, no pyramid: a temporary pyramid is built in TMPDIR too
    tifffile.imwrite(source, random_rgb(1536, 1536, seed=3), photometric="rgb", rowsperstrip=64)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "o.zarr"
    env = {**os.environ, "TMPDIR": str(scratch)}
    command = [sys.executable, "-m", "magnet_cli.cli", "segment", str(source), "-o", str(out), "--model",
               str(bundle_dir), "--device", "cpu", "--no-progress", "--mode", "patch"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(map(is_in_use, tmp_path.glob("o.zarr.partial-*"))) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be stopped: give it a larger input"
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "stopped" in lines[0] and "--resume" in lines[0], stderr
    # The finished work (and the input's pyramid) stay in one partial store, nothing in TMPDIR, no output.
    (partial,) = [p for p in tmp_path.iterdir() if p.name not in ("big.tif", "scratch")]
    assert partial.name.startswith("o.zarr.partial-") and magnet_marker(partial)["state"] == "partial"
    assert list(scratch.iterdir()) == []
    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "o.zarr", "scratch"]
    assert list(scratch.iterdir()) == []


# --- ownership markers of the side files -------------------------------------------------------------------
def test_side_files_carry_a_marker_that_other_files_lack(tmp_path):
    from magnet_cli.classes import default_classes
    from magnet_cli.io.geotiff import is_magnet_geotiff, write_geotiff
    from magnet_cli.io.labels import LabelWriter
    from magnet_cli.io.preview import is_magnet_preview, write_preview

    with LabelWriter(tmp_path / "o.zarr", 40, 30, default_classes(2)) as writer:
        writer.write(0, 0, np.ones((40, 30), np.uint8))
    ours_tif, ours_png = write_geotiff(writer.path, tmp_path / "o.tif", None), write_preview(writer.path, tmp_path / "o.png", default_classes(2), legend=False)
    assert is_magnet_geotiff(ours_tif) and is_magnet_preview(ours_png)
    assert skio.imread(ours_png).shape == (40, 30, 3)  # the tEXt chunk keeps the PNG valid
    theirs_tif, theirs_png = tmp_path / "t.tif", tmp_path / "t.png"
    tifffile.imwrite(theirs_tif, np.zeros((8, 8), np.uint8), description="magnet-cli")
    skio.imsave(theirs_png, np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    assert not is_magnet_geotiff(theirs_tif) and not is_magnet_preview(theirs_png)
    assert not is_magnet_geotiff(ours_png) and not is_magnet_preview(ours_tif) and not is_magnet_preview(tmp_path)


def test_evaluate_refuses_an_unfinished_store(bundle_dir, tmp_path):
    import zarr
    from skimage import io as skio
    from typer.testing import CliRunner

    from magnet_cli.cli import app
    from tests.conftest import random_rgb

    image = tmp_path / "scene.png"
    skio.imsave(image, random_rgb(96, 96), check_contrast=False)
    out = tmp_path / "scene.zarr"
    runner = CliRunner()
    done = runner.invoke(app, ["segment", str(image), "-o", str(out), "--model", str(bundle_dir), "--no-progress"])
    assert done.exit_code == 0, done.output
    truth = tmp_path / "truth.png"
    skio.imsave(truth, np.zeros((96, 96), np.uint8), check_contrast=False)
    scored = runner.invoke(app, ["evaluate", str(out / "0"), "--truth", str(truth), "--classes", "3", "--no-progress"])
    assert scored.exit_code == 0, scored.output
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["magnet"] = {**group.attrs["magnet"], "state": "partial"}  # as kill -9 leaves it
    for target in (out, out / "0"):
        refused = runner.invoke(app, ["evaluate", str(target), "--truth", str(truth), "--classes", "3", "--no-progress"])
        assert refused.exit_code == 2 and "unfinished" in refused.output, refused.output


def test_a_stopped_run_whose_cleanup_hangs_still_exits_and_shows_where():
    script = (
        "import time\nimport magnet_cli.cli as cli\n"
        "cli.STOP_GRACE_SECONDS = 0.5\ncli._exit_if_cleanup_hangs(15)\ntime.sleep(60)  # a clean-up that never ends\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 143
    assert "exiting now" in done.stderr and "Thread" in done.stderr  # every thread's stack, to find the hang
