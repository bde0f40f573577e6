"""Issue 10, folder batches: one bad image never stops a batch; exit 0 all done, 1 some failed (the
others finished), 2 nothing could run; inputs from `@list.txt` or stdin `-`; one --json record per image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from skimage import io as skio

from magnet_cli.errors import InputError
from magnet_cli.settings import InferenceSettings, ModelSettings, RunSettings
from tests.conftest import random_rgb
from tests.test_cli import assert_clean_failure, assert_label_image, segment


def images(folder: Path, good: int = 2, bad: int = 1) -> list[Path]:
    """`good` small PNGs and `bad` files that claim to be PNGs but are not (sorted between them)."""
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(good):
        path = folder / f"tile{i}.png"
        skio.imsave(path, random_rgb(64, 80, seed=i), check_contrast=False)
        paths.append(path)
    for i in range(bad):
        path = folder / f"tile{i}b.png"
        path.write_bytes(b"not a png at all")
        paths.append(path)
    return sorted(paths)


def records(result) -> list[dict]:
    return json.loads(result.stdout)


def test_a_bad_image_does_not_stop_the_batch(bundle_dir, tmp_path):
    images(tmp_path / "in")
    masks = tmp_path / "masks"
    result = segment(bundle_dir, tmp_path / "in", "-o", masks, "--mode", "downsample", "--json")
    assert result.exit_code == 1, result.output
    by_name = {Path(r["input"]).name: r for r in records(result)}
    assert [by_name[n]["status"] for n in ("tile0.png", "tile0b.png", "tile1.png")] == ["ok", "failed", "ok"]
    assert "tile0b.png" in by_name["tile0b.png"]["error"] and by_name["tile0.png"]["error"] is None
    assert_label_image(masks / "tile0.zarr", 64, 80)
    assert_label_image(masks / "tile1.zarr", 64, 80)
    assert sorted(p.name for p in masks.iterdir()) == ["tile0.zarr", "tile1.zarr"]  # no partial left
    assert "tile0b.png" in result.stderr  # the failure is one line on stderr too


def test_the_table_shows_each_images_status(bundle_dir, tmp_path):
    images(tmp_path / "in")
    result = segment(bundle_dir, tmp_path / "in", "-o", tmp_path / "masks", "--mode", "downsample")
    assert result.exit_code == 1
    assert "status" in result.stdout and "failed" in result.stdout and "ok" in result.stdout


def test_a_batch_in_which_nothing_could_run_exits_2(bundle_dir, tmp_path):
    images(tmp_path / "in", good=0, bad=2)
    result = segment(bundle_dir, tmp_path / "in", "-o", tmp_path / "masks", "--json")
    assert result.exit_code == 2
    assert [r["status"] for r in records(result)] == ["failed", "failed"]


def test_inputs_from_a_list_file(bundle_dir, tmp_path):
    paths = images(tmp_path / "in", good=2, bad=0)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in paths) + "\n\n")
    result = segment(bundle_dir, f"@{listing}", "-o", tmp_path / "masks", "--mode", "downsample")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["tile0.zarr", "tile1.zarr"]


def test_a_missing_path_in_a_list_is_a_failed_image_not_a_stopped_batch(bundle_dir, tmp_path):
    paths = images(tmp_path / "in", good=2, bad=0)
    listing = tmp_path / "list.txt"
    gone = tmp_path / "in" / "deleted.png"
    listing.write_text(f"{paths[0]}\n{gone}\n{paths[1]}\n")
    result = segment(bundle_dir, f"@{listing}", "-o", tmp_path / "masks", "--mode", "downsample", "--json")
    assert result.exit_code == 1, result.output
    found = records(result)
    assert [r["status"] for r in found] == ["ok", "failed", "ok"]
    assert "no such file" in found[1]["error"] and str(gone) in found[1]["error"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["tile0.zarr", "tile1.zarr"]


def test_one_missing_input_is_a_usage_error(bundle_dir, tmp_path):
    assert_clean_failure(segment(bundle_dir, tmp_path / "nope.png", "-o", tmp_path / "o.zarr"), "no such file")


def test_inputs_from_stdin_make_a_batch_even_of_one(bundle_dir, tmp_path):
    from typer.testing import CliRunner

    from magnet_cli.cli import app

    (path,) = images(tmp_path / "in", good=1, bad=0)
    args = ["segment", "-", "-o", str(tmp_path / "masks"), "--model", str(bundle_dir), "--no-progress",
            "--device", "cpu", "--mode", "downsample"]
    result = CliRunner().invoke(app, args, input=f"{path}\n", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_label_image(tmp_path / "masks" / "tile0.zarr", 64, 80)


def test_an_empty_list_is_a_usage_error(bundle_dir, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n")
    assert_clean_failure(segment(bundle_dir, f"@{listing}", "-o", tmp_path / "masks"), "list.txt", "lists no input")
    assert_clean_failure(segment(bundle_dir, f"@{tmp_path / 'absent.txt'}", "-o", tmp_path / "masks"), "absent.txt")


def test_a_rerun_without_overwrite_refuses_before_work_and_says_how_many_exist(bundle_dir, tmp_path):
    images(tmp_path / "in", good=2, bad=0)
    masks = tmp_path / "masks"
    assert segment(bundle_dir, tmp_path / "in", "-o", masks, "--mode", "downsample").exit_code == 0
    before = sorted(str(p) for p in masks.rglob("*"))
    assert_clean_failure(segment(bundle_dir, tmp_path / "in", "-o", masks), "tile0.zarr", "1 more", "--overwrite")
    assert sorted(str(p) for p in masks.rglob("*")) == before


def test_library_returns_failures_as_records_in_a_batch_and_raises_for_one_image(bundle_dir, tmp_path):
    from magnet_cli.segmentation import segment as segment_images

    paths = images(tmp_path / "in")
    settings = dict(model=ModelSettings(model=bundle_dir), inference=InferenceSettings(device="cpu", mode="downsample"),
                    run=RunSettings(progress=False))
    results = segment_images(paths, tmp_path / "masks", **settings)
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    with pytest.raises(InputError):
        segment_images([paths[1]], tmp_path / "one.zarr", **settings)
