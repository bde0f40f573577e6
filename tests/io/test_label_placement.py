"""Labels beside their image (IMAGE.zarr/labels/NAME), judged by the other side's code: the image is
written by ome-zarr-py with its default 5-level pyramid, the result validated by ome-zarr-models (image
with its labels) and read back by ome-zarr-py's Reader (napari's), for NGFF 0.4 (Zarr v2) and 0.5 (v3)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr.writer import write_image, write_labels
from ome_zarr_models.v04.image import Image as ImageV04
from ome_zarr_models.v05.image import Image as ImageV05
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.io.labels import read_labels

from tests.conftest import random_rgb

H, W = 301, 203  # odd: ome-zarr-py's levels round down (150, 75, 37, 18), ours would round up
FORMATS = {2: (FormatV04(), ImageV04), 3: (FormatV05(), ImageV05)}


def make_image(path: Path, zarr_format: int, height: int = H, width: int = W) -> Path:
    """An RGB (c, y, x) OME-Zarr image with ome-zarr-py's default pyramid and a physical pixel size."""
    fmt, _ = FORMATS[zarr_format]
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    pixels = np.moveaxis(random_rgb(height, width, seed=7), -1, 0)
    write_image(pixels, group, axes="cyx", fmt=fmt, scale={"y": 0.5, "x": 0.5}, axes_units={"y": "micrometer", "x": "micrometer"})
    return path


def tree_digest(folder: Path, skip: str = "labels") -> dict[str, str]:
    """Every file of the parent image except its labels group, by content."""
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*")) if f.is_file() and f.relative_to(folder).parts[0] != skip
    }


def listed_labels(image: Path) -> list[str]:
    """The `labels` list of the image's labels group (NGFF 0.5 nests it under "ome")."""
    attributes = dict(zarr.open_group(str(image / "labels"), mode="r").attrs)
    return list(attributes.get("ome", attributes)["labels"])


def segment(*args: str) -> object:
    return CliRunner().invoke(app, ["segment", *args, "--no-progress"])


@pytest.fixture(params=sorted(FORMATS), ids=lambda f: f"zarr{f}")
def zarr_format(request) -> int:
    return request.param


def test_labels_beside_the_image_validate_and_read_with_it(tmp_path, bundle_dir, zarr_format):
    image = make_image(tmp_path / "slide.zarr", zarr_format)
    before = tree_digest(image)
    result = segment(str(image), "-o", str(image / "labels" / "magnet"), "--model", str(bundle_dir))
    assert result.exit_code == 0, result.output

    # ome-zarr-models: the image with its labels (same level count, NAME listed) is valid.
    _, image_class = FORMATS[zarr_format]
    model = image_class.from_zarr(zarr.open_group(str(image), mode="r"))
    assert model.labels is not None and listed_labels(image) == ["magnet"]

    # ome-zarr-py's Reader (napari's) finds the image and the label image, with the image's levels.
    nodes = list(Reader(parse_url(str(image)))())
    label_nodes = [n for n in nodes if n.load(Label)]
    assert nodes[0].load(Multiscales) and len(label_nodes) == 1
    image_levels = [a.shape[-2:] for a in nodes[0].data]
    assert [a.shape for a in label_nodes[0].data] == image_levels and len(image_levels) == 5

    # Physical scale and the source link follow the parent; its own files are untouched.
    label = zarr.open_group(str(image / "labels" / "magnet"), mode="r")
    attributes = dict(label.attrs)
    ome = attributes.get("ome", attributes)
    multiscale = ome["multiscales"][0]
    parent = dict(zarr.open_group(str(image), mode="r").attrs)
    parent_datasets = parent.get("ome", parent)["multiscales"][0]["datasets"]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    for ours, theirs in zip(multiscale["datasets"], parent_datasets, strict=True):  # c dropped, y and x kept
        assert ours["coordinateTransformations"][0]["scale"] == theirs["coordinateTransformations"][0]["scale"][1:]
    assert [a.get("unit") for a in multiscale["axes"]] == ["micrometer", "micrometer"]
    assert ome["image-label"]["source"]["image"] == "../../"
    assert tree_digest(image) == before

    # The labels sample level 0 as the levels say.
    full = read_labels(image / "labels" / "magnet")
    assert np.array_equal(read_labels(image / "labels" / "magnet", level=2), full[::4, ::4][: 75, : 50])


def test_overwrite_replaces_only_our_label_and_keeps_the_others(tmp_path, bundle_dir, zarr_format):
    image = make_image(tmp_path / "slide.zarr", zarr_format)
    fmt, _ = FORMATS[zarr_format]
    # Someone else's label image, written by ome-zarr-py.
    write_labels(np.ones((H, W), dtype=np.uint8), zarr.open_group(str(image), mode="r+"), name="cells", fmt=fmt, axes="yx")
    theirs = tree_digest(image / "labels" / "cells", skip="")
    out = image / "labels" / "magnet"
    assert segment(str(image), "-o", str(out), "--model", str(bundle_dir)).exit_code == 0
    again = segment(str(image), "-o", str(out), "--model", str(bundle_dir))
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert segment(str(image), "-o", str(out), "--model", str(bundle_dir), "--overwrite", "--mode", "patch").exit_code == 0
    assert FORMATS[zarr_format][1].from_zarr(zarr.open_group(str(image), mode="r")).labels is not None
    assert listed_labels(image) == ["cells", "magnet"]
    assert tree_digest(image / "labels" / "cells", skip="") == theirs
    # Their label is not ours to replace.
    refused = segment(str(image), "-o", str(image / "labels" / "cells"), "--model", str(bundle_dir), "--overwrite")
    assert refused.exit_code == 2 and "not written by magnet-cli" in refused.output
    assert tree_digest(image / "labels" / "cells", skip="") == theirs


def test_labels_from_another_input_must_match_the_image_size(tmp_path, bundle_dir):
    import imageio.v3 as iio

    image = make_image(tmp_path / "slide.zarr", 3)
    same, other = tmp_path / "same.png", tmp_path / "other.png"
    iio.imwrite(same, random_rgb(H, W, seed=1))
    iio.imwrite(other, random_rgb(H + 1, W, seed=1))
    wrong = segment(str(other), "-o", str(image / "labels" / "x"), "--model", str(bundle_dir))
    assert wrong.exit_code == 2 and "must match its size" in wrong.output
    assert not (image / "labels" / "x").exists()
    assert segment(str(same), "-o", str(image / "labels" / "x"), "--model", str(bundle_dir)).exit_code == 0
    assert ImageV05.from_zarr(zarr.open_group(str(image), mode="r")).labels is not None


def test_side_outputs_still_may_not_go_inside_the_input(tmp_path, bundle_dir):
    image = make_image(tmp_path / "slide.zarr", 3)
    (image / "labels").mkdir()
    result = segment(str(image), "-o", str(tmp_path / "o.zarr"), "--model", str(bundle_dir),
                     "--preview", str(image / "labels" / "p.png"))
    assert result.exit_code == 2 and "inside the input" in result.output
