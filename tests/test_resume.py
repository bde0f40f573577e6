"""Fault injection: runs killed (kill -9, SIGTERM) at seeded points, then `--resume`d, end bit-identical
to an uninterrupted run; shards of one run, concurrent or one after another, publish the same result once.

Each run is a real `magnet segment` subprocess, so the kill lands wherever the run happens to be: laying
out the partial store, building the input's pyramid, inside a unit, between a unit's chunks and its
ledger entry, or publishing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from magnet_cli.io.partial_store import is_in_use
from tests.conftest import random_rgb

SIZE = 1024  # with the tiny bundle's 64 px windows: 5 levels, 4 units of 85 windows


def command(bundle_dir: Path, inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "magnet_cli.cli", "segment", *map(str, inputs), "-o", str(out), "--model",
        str(bundle_dir), "--device", "cpu", "--no-progress", "--json", *extra,
    ]


def finish(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of a label store, by path (labels at every level, probabilities)."""
    group = zarr.open_group(str(store), mode="r")
    found = {}
    for name, array in group.arrays():
        found[name] = array[...]
    for name, sub in group.groups():
        for inner, array in sub.arrays():
            found[f"{name}/{inner}"] = array[...]
    return found


def assert_same_store(a: Path, b: Path) -> None:
    left, right = arrays(a), arrays(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert np.array_equal(left[name], right[name]), f"{name} differs"


def ledger_entries(folder: Path, name: str) -> int:
    return len(list(folder.glob(f"{name}.partial-*/ledger/*.json")))


def interrupt(args: list[str], folder: Path, name: str, after_units: int, delay: float, signum: int) -> int:
    """Start a run, wait until its ledger holds `after_units` units (plus `delay` s), send `signum`."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(map(is_in_use, folder.glob(f"{name}.partial-*"))) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # until the run holds its partial store (its signal handlers are installed by then)
    while ledger_entries(folder, name) < after_units and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(signum)
    process.communicate(timeout=120)
    return process.returncode


@pytest.fixture
def striped(tmp_path) -> Path:
    """A striped TIFF without a pyramid: runs build one, which a resumed run must reuse."""
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, random_rgb(SIZE, SIZE, seed=7), photometric="rgb", rowsperstrip=32)
    return path


@pytest.mark.parametrize("signum, seed", [(signal.SIGKILL, 1), (signal.SIGTERM, 2)])
def test_killed_runs_resume_to_bit_identical_output(bundle_dir, striped, tmp_path, signum, seed):
    reference = tmp_path / "reference.zarr"
    finish(command(bundle_dir, [striped], reference, "--write-probabilities"))
    out = tmp_path / "o.zarr"
    rng = random.Random(seed)
    codes = []
    for attempt in range(3):
        extra = ["--write-probabilities"] + (["--resume"] if attempt else [])
        after, delay = rng.randrange(0, 4), rng.uniform(0.0, 0.4)
        codes.append(interrupt(command(bundle_dir, [striped], out, *extra), tmp_path, "o.zarr", after, delay, signum))
    assert not out.exists() or codes[-1] == 0  # nothing published by an interrupted run
    if signum == signal.SIGTERM:
        assert set(codes) <= {143, 0} and 143 in codes, codes
    done = json.loads(finish(command(bundle_dir, [striped], out, "--write-probabilities", "--resume")).stdout)
    assert_same_store(reference, out)
    assert done[0]["status"] in ("ok", "skipped")
    assert not list(tmp_path.glob("o.zarr.*")), "the partial store must be gone once published"


def test_resumed_run_does_only_unfinished_units(bundle_dir, striped, tmp_path):
    out = tmp_path / "o.zarr"
    interrupt(command(bundle_dir, [striped], out), tmp_path, "o.zarr", 2, 0.0, signal.SIGKILL)
    left = ledger_entries(tmp_path, "o.zarr")
    assert 2 <= left < 4
    done = json.loads(finish(command(bundle_dir, [striped], out, "--resume")).stdout)[0]
    assert done["units_total"] == 4 and done["units"] == 4 - left and done["published"]


def test_folder_batch_resumes_after_sigterm(bundle_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index, size in enumerate((256, 320, SIZE)):
        tifffile.imwrite(images / f"s{index}.tif", random_rgb(size, size, seed=index), photometric="rgb")
    reference, out = tmp_path / "reference", tmp_path / "masks"
    finish(command(bundle_dir, [images], reference))
    process = subprocess.Popen(command(bundle_dir, [images], out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while ledger_entries(out, "s2.zarr") < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "--resume" in stderr
    done = json.loads(finish(command(bundle_dir, [images], out, "--resume")).stdout)
    assert [r["status"] for r in done] == ["skipped", "skipped", "ok"]
    for name in ("s0.zarr", "s1.zarr", "s2.zarr"):
        assert_same_store(reference / name, out / name)


# --- shards ---------------------------------------------------------------------------------------------
def test_concurrent_shards_publish_one_output_equal_to_a_single_run(bundle_dir, striped, tmp_path):
    reference = tmp_path / "reference.zarr"
    finish(command(bundle_dir, [striped], reference))
    out = tmp_path / "o.zarr"
    shards = [
        subprocess.Popen(command(bundle_dir, [striped], out, "--shard", f"{i}/3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    results = []
    for process in shards:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        results.append(json.loads(stdout)[0])
    assert sum(r["published"] for r in results) == 1
    assert sum(r["units"] for r in results) == 4
    assert_same_store(reference, out)
    assert not list(tmp_path.glob("o.zarr.*"))


def test_shards_in_reverse_order_with_a_killed_one_resumed(bundle_dir, striped, tmp_path):
    reference = tmp_path / "reference.zarr"
    finish(command(bundle_dir, [striped], reference))
    out = tmp_path / "o.zarr"
    interrupt(command(bundle_dir, [striped], out, "--shard", "1/2"), tmp_path, "o.zarr", 1, 0.0, signal.SIGKILL)
    first = json.loads(finish(command(bundle_dir, [striped], out, "--shard", "0/2")).stdout)[0]
    assert not first["published"] and not out.exists()
    last = json.loads(finish(command(bundle_dir, [striped], out, "--shard", "1/2", "--resume")).stdout)[0]
    assert last["published"]
    assert_same_store(reference, out)


def test_shards_split_a_folder_by_image(bundle_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):  # one unit each
        tifffile.imwrite(images / f"s{index}.tif", random_rgb(256, 200 + 32 * index, seed=index), photometric="rgb")
    reference, out = tmp_path / "reference", tmp_path / "masks"
    finish(command(bundle_dir, [images], reference))
    first = json.loads(finish(command(bundle_dir, [images], out, "--shard", "0/2")).stdout)
    second = json.loads(finish(command(bundle_dir, [images], out, "--shard", "1/2")).stdout)
    done = [r["units"] for r in first], [r["units"] for r in second]
    assert done == ([0, 1, 0], [1, 0, 1]) or done == ([1, 0, 0], [0, 1, 1]), done  # each image in one shard
    assert [a["status"] == "skipped" for a in first] == [u == 0 for u in done[0]]
    for name in ("s0.zarr", "s1.zarr", "s2.zarr"):
        assert_same_store(reference / name, out / name)


def test_a_store_a_live_run_holds_is_neither_joined_nor_removed(bundle_dir, striped, tmp_path):
    import fcntl

    out = tmp_path / "o.zarr"
    interrupt(command(bundle_dir, [striped], out), tmp_path, "o.zarr", 1, 0.0, signal.SIGKILL)
    (partial,) = tmp_path.glob("o.zarr.partial-*")
    lock = os.open(partial / "lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as a live run holds it
    try:
        for flag in ("--resume", "--overwrite"):
            second = subprocess.run(command(bundle_dir, [striped], out, flag), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and "writing it now" in second.stderr, second.stderr
            assert partial.is_dir() and not out.exists()
    finally:
        os.close(lock)
    finish(command(bundle_dir, [striped], out, "--resume"))
    assert out.is_dir() and not partial.exists()
