"""A seeded fuzz corpus of hostile inputs: each case opened and fully read in a child process under a
time limit and a memory cap ends as a clean InputError or a completed read, never a traceback, a hang
or a memory blow-up. benchmarks/fuzz_inputs.py runs a larger corpus and prints the counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.io.fuzz_corpus import REPO, build_case, corpus, run_cases, write_base_tiff, patch_tag, write_zarr_array

CI_SEED, CI_CASES = 10, 40


def test_fuzzed_inputs_end_as_clean_errors_or_complete_reads(tmp_path):
    cases = corpus(CI_SEED, CI_CASES)
    paths = [build_case(case, tmp_path / f"{index:02d}") for index, case in enumerate(cases)]
    outcomes = {case.name: result for case, result in zip(cases, run_cases(paths))}
    bad = {name: result for name, result in outcomes.items() if result[0] not in ("clean error", "read completed")}
    assert bad == {}
    assert {result for result, _ in outcomes.values()} == {"clean error", "read completed"}  # both kinds drawn


def _forged_tiff(folder: Path) -> Path:
    path = write_base_tiff(folder / "forged.tif")
    patch_tag(path, 256, 10**7)
    return patch_tag(path, 257, 10**7)


def _seven_bit_tiff(folder: Path) -> Path:
    return patch_tag(write_base_tiff(folder / "seven.tif"), 258, [7, 7, 7])


def _forged_zarr(folder: Path) -> Path:
    return write_zarr_array(folder / "forged.zarr", {"shape": [10**7, 10**7]})


@pytest.mark.slow
@pytest.mark.parametrize("make", [_forged_tiff, _seven_bit_tiff, _forged_zarr])
def test_segment_refuses_hostile_input_with_exit_2_and_one_line(tmp_path, bundle_dir, make):
    path = make(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "magnet_cli.cli", "segment", str(path), "-o", str(tmp_path / "out.zarr"),
         "--model", str(bundle_dir), "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and path.name in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "out.zarr").exists()
