"""`segment --cluster`: units as tasks on a real Dask distributed scheduler, bit-identical to one process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile

from tests.conftest import random_rgb
from tests.test_resume import assert_same_store, command, finish, ledger_entries

pytest.importorskip("distributed")  # the test extra installs it (.ci/run), so CI always runs these


@pytest.fixture
def scene(tmp_path) -> Path:
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, random_rgb(1024, 1024, seed=11), photometric="rgb", rowsperstrip=32)
    return path


@pytest.fixture
def reference(bundle_dir, scene, tmp_path) -> Path:
    out = tmp_path / "reference.zarr"
    finish(command(bundle_dir, [scene], out))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scheduler():
    """A `dask scheduler` and two single-threaded workers (no nanny: a killed worker stays dead)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                   "--port", str(port), "--dashboard-address", ":0"], **quiet)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    workers = [
        subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                          "--no-nanny", "--dashboard-address", ":0"], **quiet)
        for _ in range(2)
    ]
    processes += workers
    try:
        yield address, workers
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)


def test_local_cluster_gives_the_single_process_labels(bundle_dir, scene, reference, tmp_path):
    out = tmp_path / "o.zarr"
    done = json.loads(finish(command(bundle_dir, [scene], out, "--cluster", "local:2")).stdout)[0]
    assert done["published"] and done["units"] == done["units_total"] == 4
    assert done["refined_per_level"] == done["windows_per_level"] and done["windows"] > 4  # summed over the tasks
    assert_same_store(reference, out)
    assert not list(tmp_path.glob("o.zarr.*"))


def test_running_scheduler_with_a_worker_killed_mid_run(bundle_dir, scene, reference, tmp_path, scheduler):
    address, workers = scheduler
    out = tmp_path / "o.zarr"
    run = subprocess.Popen(command(bundle_dir, [scene], out, "--cluster", address), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while ledger_entries(tmp_path, "o.zarr") < 1 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers[0].send_signal(signal.SIGKILL)  # its unit in flight is lost; Dask reruns it on the other worker
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert json.loads(stdout)[0]["published"]
    assert_same_store(reference, out)


def test_cluster_without_dask_names_the_extra(monkeypatch, bundle_dir, scene, tmp_path):
    from magnet_cli.errors import UsageError
    from magnet_cli.settings import ModelSettings, RunSettings
    from magnet_cli.segmentation import segment

    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(UsageError, match=r"magnet-cli\[dask\]"):
        segment([scene], tmp_path / "o.zarr", model=ModelSettings(model=bundle_dir), run=RunSettings(cluster="local:2"))
    assert not list(tmp_path.glob("o.zarr*"))


@pytest.mark.parametrize("address", ["local:x", "local:0", "127.0.0.1:8786"])
def test_bad_cluster_addresses_are_usage_errors(bundle_dir, scene, tmp_path, address):
    done = subprocess.run(command(bundle_dir, [scene], tmp_path / "o.zarr", "--cluster", address), capture_output=True, text=True)
    assert done.returncode == 2 and "--cluster" in done.stderr and "Traceback" not in done.stderr


def test_a_folder_on_a_cluster_spreads_its_images_and_reports_each(bundle_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        tifffile.imwrite(folder / f"s{index}.tif", random_rgb(200 + 40 * index, 240, seed=index), photometric="rgb")
    (folder / "s9.tif").write_bytes(b"II*\x00 not a tiff")  # one bad image: a failed record, the rest go on
    reference, out = tmp_path / "reference", tmp_path / "masks"
    single = subprocess.run(command(bundle_dir, [folder], reference), capture_output=True, text=True, timeout=300)
    assert single.returncode == 1, single.stderr
    done = subprocess.run(command(bundle_dir, [folder], out, "--cluster", "local:2"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    statuses = {Path(r["input"]).name: r["status"] for r in json.loads(done.stdout)}
    assert statuses == {"s0.tif": "ok", "s1.tif": "ok", "s2.tif": "ok", "s9.tif": "failed"}
    for index in range(3):
        assert_same_store(reference / f"s{index}.zarr", out / f"s{index}.zarr")
    assert sorted(p.name for p in out.iterdir()) == ["s0.zarr", "s1.zarr", "s2.zarr"]


def test_benchmark_runs_its_scaling_series_on_a_cluster(bundle_dir, tmp_path):
    from magnet_cli.bench import benchmark
    from magnet_cli.settings import ModelSettings, RunSettings

    report = benchmark(None, tmp_path / "out", model=ModelSettings(model=bundle_dir), modes=[], sizes=[300],
                       peer=False, limit=False, run=RunSettings(progress=False, cluster="local:2"))
    (row,) = report.scaling
    assert row["cluster"] == "local:2" and row["windows"] > 0
    assert "--cluster local:2" in (tmp_path / "out" / "benchmark.md").read_text()
