"""Our label outputs as the OME-Zarr ecosystem sees them: validated by ome-zarr-models (the spec's pydantic
models) and read by ome-zarr-py (the reader behind napari-ome-zarr), for NGFF 0.4 (Zarr v2) and 0.5
(Zarr v3). Our own reader and expectations are tested in test_labels.py; here only other people's code
judges the files."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v04.image import Image as ImageV04
from ome_zarr_models.v04.image_label import ImageLabel as ImageLabelV04
from ome_zarr_models.v05.image import Image as ImageV05
from ome_zarr_models.v05.image_label import ImageLabel as ImageLabelV05

from magnet_cli.classes import ClassInfo
from magnet_cli.io.labels import LabelWriter

H, W = 300, 211  # odd width: the coarser levels round up
MIN_LEVEL = 40
LEVELS = 4  # 300x211, 150x106, 75x53, 38x27
CLASSES = [ClassInfo("meadow", (86, 150, 60)), ClassInfo("water", (40, 110, 220)), ClassInfo("road", (250, 250, 250))]

# zarr_format -> (NGFF version, ome-zarr-models' image-label class, its image class, ome-zarr-py's format)
FORMATS = {
    2: ("0.4", ImageLabelV04, ImageV04, FormatV04()),
    3: ("0.5", ImageLabelV05, ImageV05, FormatV05()),
}


@pytest.fixture(params=sorted(FORMATS), ids=lambda f: f"zarr{f}-ngff{FORMATS[f][0]}")
def output(request, tmp_path):
    """A label output with probabilities and uncertainty, written in two windows; (path, format, mask)."""
    zarr_format = request.param
    rng = np.random.default_rng(zarr_format)
    mask = rng.integers(0, len(CLASSES), size=(H, W))
    probabilities = rng.random((len(CLASSES), H, W))
    path = tmp_path / "labels.zarr"
    with LabelWriter(
        path, H, W, CLASSES, chunk_size=64, zarr_format=zarr_format, min_level_size=MIN_LEVEL,
        write_probabilities=True, write_uncertainty=True,
    ) as writer:
        for y0, y1 in ((0, 128), (128, H)):
            writer.write(y0, 0, mask[y0:y1], probabilities[:, y0:y1], probabilities[0, y0:y1])
    return path, zarr_format, mask


def test_ome_zarr_models_recognises_an_image_label_of_the_written_version(output):
    path, zarr_format, _ = output
    version, image_label_class, _, _ = FORMATS[zarr_format]
    model = open_ome_zarr(zarr.open_group(path, mode="r"))
    assert isinstance(model, image_label_class) and model.ome_zarr_version == version


def test_ome_zarr_models_validates_the_multiscales_and_the_class_colours(output):
    path, zarr_format, _ = output
    _, image_label_class, _, _ = FORMATS[zarr_format]
    attributes = image_label_class.from_zarr(zarr.open_group(path, mode="r")).ome_attributes
    (multiscale,) = attributes.multiscales
    assert [(axis.name, axis.type) for axis in multiscale.axes] == [("y", "space"), ("x", "space")]
    assert [d.path for d in multiscale.datasets] == [str(k) for k in range(LEVELS)]
    for k, dataset in enumerate(multiscale.datasets):
        (transform,) = dataset.coordinateTransformations
        assert transform.type == "scale" and list(transform.scale) == [2.0**k, 2.0**k]
    label = attributes.image_label
    assert [(c.label_value, tuple(c.rgba)) for c in label.colors] == [(i, (*c.color, 255)) for i, c in enumerate(CLASSES)]
    assert [p.label_value for p in label.properties] == list(range(len(CLASSES)))


@pytest.mark.parametrize("side", ["probabilities", "uncertainty"])
def test_ome_zarr_models_validates_the_side_outputs_as_images(output, side):
    path, zarr_format, _ = output
    _, _, image_class, _ = FORMATS[zarr_format]
    image = image_class.from_zarr(zarr.open_group(path / side, mode="r"))
    (multiscale,) = image.ome_attributes.multiscales
    assert [d.path for d in multiscale.datasets] == ["0"]


def test_ome_zarr_models_rejects_what_the_spec_forbids(output):
    """The validation above means something: a colour channel of 300 and a duplicated label value fail."""
    path, zarr_format, _ = output
    _, image_label_class, _, _ = FORMATS[zarr_format]
    group = zarr.open_group(path, mode="r+")
    attributes = json.loads(json.dumps(dict(group.attrs)))
    label = (attributes["ome"] if zarr_format == 3 else attributes)["image-label"]
    label["colors"][0]["rgba"] = [300, 0, 0, 255]
    group.attrs.put(attributes)
    with pytest.raises(pydantic.ValidationError, match="rgba"):
        image_label_class.from_zarr(zarr.open_group(path, mode="r"))
    label["colors"][0] = {**label["colors"][1]}
    group.attrs.put(attributes)
    with pytest.raises(pydantic.ValidationError, match="[Dd]uplicated label-value"):
        image_label_class.from_zarr(zarr.open_group(path, mode="r"))


def test_ome_zarr_py_reads_one_label_node_with_every_level_colour_and_class(output):
    path, zarr_format, mask = output
    _, _, _, reader_format = FORMATS[zarr_format]
    location = parse_url(str(path), fmt=reader_format)
    assert location is not None and location.version == FORMATS[zarr_format][0]
    (node,) = list(Reader(location)())
    assert node.first(Label) is not None and node.first(Multiscales) is not None
    assert [axis["name"] for axis in node.metadata["axes"]] == ["y", "x"]
    assert node.metadata["coordinateTransformations"] == [
        [{"type": "scale", "scale": [2.0**k, 2.0**k]}] for k in range(LEVELS)
    ]
    # Pixel values: level k is the mask sampled every 2^k pixels, in the class ids' own dtype.
    assert len(node.data) == LEVELS
    for k, level in enumerate(node.data):
        assert level.dtype == np.uint8
        np.testing.assert_array_equal(np.asarray(level), mask[:: 2**k, :: 2**k], err_msg=f"level {k}")
    # image-label: ome-zarr-py scales rgba to [0, 1] and keys colours and properties by label value.
    assert node.metadata["color"] == {i: [v / 255 for v in (*c.color, 255)] for i, c in enumerate(CLASSES)}
    assert node.metadata["properties"] == {i: {"class": c.name} for i, c in enumerate(CLASSES)}
