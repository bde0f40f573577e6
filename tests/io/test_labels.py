"""LabelWriter: exact pyramid content, NGFF metadata for both Zarr formats, atomic and abortable output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from magnet_cli.classes import ClassInfo, default_classes
from magnet_cli.errors import OutputError
from magnet_cli.io.labels import LABELS_FORMAT, LabelWriter, level_shapes, open_label_levels, read_labels

H, W = 513, 777  # odd on purpose: no level is a multiple of the chunk or of 2^k
ROW_CUTS = [0, 37, 200, 201, 455, H]  # windows of odd offsets and sizes, one of them a single row
COL_CUTS = [0, 13, 300, 301, 517, W]
CHUNK = 64
MIN_LEVEL = 20
CLASSES = default_classes(5)


def windows(seed: int = 0) -> list[tuple[int, int, int, int]]:
    """The (y0, x0, y1, x1) windows of an irregular tiling of H x W, in a shuffled order."""
    boxes = [
        (y0, x0, y1, x1)
        for y0, y1 in zip(ROW_CUTS, ROW_CUTS[1:])
        for x0, x1 in zip(COL_CUTS, COL_CUTS[1:])
    ]
    order = np.random.default_rng(seed).permutation(len(boxes))
    return [boxes[i] for i in order]


def random_mask(num_classes: int = len(CLASSES), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=(H, W)).astype(np.int64)


# The ownership marker the writer adds to attributes["magnet"] of a finished write_mask store.
OWNED = {"format": LABELS_FORMAT, "state": "complete", "written": [str(k) for k in range(len(level_shapes(H, W, MIN_LEVEL)))]}


def write_mask(path, mask, classes=CLASSES, **options) -> None:
    with LabelWriter(path, H, W, classes, chunk_size=CHUNK, min_level_size=MIN_LEVEL, **options) as writer:
        for y0, x0, y1, x1 in windows():
            writer.write(y0, x0, mask[y0:y1, x0:x1])


def test_level_shapes_halve_rounding_up_until_long_side_fits():
    assert level_shapes(513, 777, 20) == [(513, 777), (257, 389), (129, 195), (65, 98), (33, 49), (17, 25), (9, 13)]
    assert level_shapes(100, 40, 256) == [(100, 40)]
    assert level_shapes(512, 512, 256) == [(512, 512), (256, 256)]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_every_pyramid_level_equals_the_mask_sampled_every_2_to_the_k(tmp_path, zarr_format):
    mask = random_mask()
    path = tmp_path / "out.zarr"
    write_mask(path, mask, zarr_format=zarr_format)
    levels = open_label_levels(path)
    assert [a.shape for a in levels] == level_shapes(H, W, MIN_LEVEL)
    for k, array in enumerate(levels):
        assert array.dtype == np.uint8
        np.testing.assert_array_equal(array[...], mask[:: 2**k, :: 2**k], err_msg=f"level {k}")
        assert read_labels(path, k).shape == array.shape


def test_read_labels_reads_a_region_of_a_level(tmp_path):
    mask = random_mask()
    write_mask(tmp_path / "out.zarr", mask)
    np.testing.assert_array_equal(read_labels(tmp_path / "out.zarr", 1, (10, 20, 60, 33)), mask[::2, ::2][10:60, 20:33])


def expected_image_label(classes: list[ClassInfo]) -> tuple[list, list]:
    colors = [{"label-value": i, "rgba": [*c.color, 255]} for i, c in enumerate(classes)]
    properties = [{"label-value": i, "class": c.name} for i, c in enumerate(classes)]
    return colors, properties


def check_multiscale(multiscale: dict, expected_levels: int) -> None:
    assert multiscale["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert [d["path"] for d in multiscale["datasets"]] == [str(k) for k in range(expected_levels)]
    for k, dataset in enumerate(multiscale["datasets"]):
        assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": [2.0**k, 2.0**k]}]


def test_zarr_v3_output_is_an_ngff_05_label_image(tmp_path):
    path = tmp_path / "out.zarr"
    georeference = {"ModelPixelScaleTag": [0.5, 0.5, 0.0]}
    magnet = {"model": "tiny", "georeference": georeference}
    write_mask(path, random_mask(), zarr_format=3, attributes={"magnet": magnet})
    document = json.loads((path / "zarr.json").read_text())
    assert document["zarr_format"] == 3 and document["node_type"] == "group"
    attributes = document["attributes"]
    ome = attributes["ome"]
    assert ome["version"] == "0.5"
    assert len(ome["multiscales"]) == 1
    check_multiscale(ome["multiscales"][0], len(level_shapes(H, W, MIN_LEVEL)))
    colors, properties = expected_image_label(CLASSES)
    assert ome["image-label"]["colors"] == colors
    assert ome["image-label"]["properties"] == properties
    assert "source" in ome["image-label"]
    assert "version" not in ome["multiscales"][0]  # 0.5 versions the whole "ome" namespace only
    assert attributes["magnet"] == {**magnet, **OWNED}

    array = json.loads((path / "0" / "zarr.json").read_text())
    assert array["dimension_names"] == ["y", "x"]  # 0.5: MUST match the axes names
    assert array["data_type"] == "uint8"
    assert array["chunk_grid"]["configuration"]["chunk_shape"] == [CHUNK, CHUNK]
    blosc = [c for c in array["codecs"] if c["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["cname"] == "zstd"


def test_zarr_v2_output_is_an_ngff_04_label_image(tmp_path):
    path = tmp_path / "out.zarr"
    write_mask(path, random_mask(), zarr_format=2, attributes={"magnet": {"model": "tiny"}})
    assert (path / ".zgroup").is_file() and not (path / "zarr.json").exists()
    attributes = json.loads((path / ".zattrs").read_text())
    assert "ome" not in attributes
    (multiscale,) = attributes["multiscales"]
    assert multiscale["version"] == "0.4"
    check_multiscale(multiscale, len(level_shapes(H, W, MIN_LEVEL)))
    colors, properties = expected_image_label(CLASSES)
    assert attributes["image-label"]["version"] == "0.4"
    assert attributes["image-label"]["colors"] == colors
    assert attributes["image-label"]["properties"] == properties
    assert attributes["magnet"] == {"model": "tiny", **OWNED}

    array = json.loads((path / "0" / ".zarray").read_text())
    assert array["chunks"] == [CHUNK, CHUNK]
    assert array["dimension_separator"] == "/"  # 0.4: chunks in nested folders
    assert array["compressor"]["id"] == "blosc" and array["compressor"]["cname"] == "zstd"
    assert (path / "0" / "0" / "0").is_file()


def test_more_than_255_classes_are_stored_as_uint16(tmp_path):
    classes = default_classes(300)
    mask = random_mask(num_classes=300)
    path = tmp_path / "out.zarr"
    write_mask(path, mask, classes=classes)
    levels = open_label_levels(path)
    assert levels[0].dtype == np.uint16
    np.testing.assert_array_equal(levels[2][...], mask[::4, ::4])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_probabilities_and_uncertainty_round_trip_quantised_to_uint8(tmp_path, zarr_format):
    rng = np.random.default_rng(3)
    probabilities = rng.random((len(CLASSES), H, W), dtype=np.float32)
    probabilities[0, 0, :4] = [0.0, 1.0, -0.5, 1.5]  # clipped to [0, 1]
    uncertainty = rng.random((H, W))
    mask = probabilities.argmax(0)
    path = tmp_path / "out.zarr"
    with LabelWriter(path, H, W, CLASSES, chunk_size=CHUNK, min_level_size=MIN_LEVEL, zarr_format=zarr_format,
                     write_probabilities=True, write_uncertainty=True) as writer:
        for y0, x0, y1, x1 in windows():
            writer.write(y0, x0, mask[y0:y1, x0:x1], probabilities[:, y0:y1, x0:x1], uncertainty[y0:y1, x0:x1])
    root = zarr.open_group(path, mode="r")
    stored = root["probabilities/0"][...]
    assert stored.dtype == np.uint8 and stored.shape == (len(CLASSES), H, W)
    np.testing.assert_array_equal(stored, np.rint(np.clip(probabilities, 0, 1) * 255).astype(np.uint8))
    assert list(stored[0, 0, :4]) == [0, 255, 0, 255]
    assert np.abs(stored / 255.0 - np.clip(probabilities, 0, 1)).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(root["uncertainty/0"][...], np.rint(uncertainty * 255).astype(np.uint8))
    np.testing.assert_array_equal(read_labels(path), mask)  # the label pyramid ignores the side groups

    for name, axes in (("probabilities", ["c", "y", "x"]), ("uncertainty", ["y", "x"])):
        attributes = dict(root[name].attrs)
        multiscales = attributes["ome"]["multiscales"] if zarr_format == 3 else attributes["multiscales"]
        assert [a["name"] for a in multiscales[0]["axes"]] == axes
        assert [d["path"] for d in multiscales[0]["datasets"]] == ["0"]
        assert attributes["magnet"]["quantization"]["scale"] == pytest.approx(1 / 255)
    assert root["probabilities"].attrs["magnet"]["classes"] == [c.name for c in CLASSES]


def test_nothing_appears_at_the_output_path_until_finalize(tmp_path):
    path = tmp_path / "out.zarr"
    writer = LabelWriter(path, H, W, CLASSES, chunk_size=CHUNK)
    writer.write(0, 0, np.zeros((10, 10), dtype=np.uint8))
    assert not path.exists()
    assert writer.finalize() == path
    assert path.is_dir()
    assert os.listdir(tmp_path) == ["out.zarr"]


def test_existing_output_is_refused_without_overwrite(tmp_path):
    path = tmp_path / "out.zarr"
    write_mask(path, random_mask(seed=1))
    with pytest.raises(OutputError, match="--overwrite") as error:
        LabelWriter(path, H, W, CLASSES)
    assert str(path) in str(error.value)
    np.testing.assert_array_equal(read_labels(path), random_mask(seed=1))
    assert os.listdir(tmp_path) == ["out.zarr"]


def test_overwrite_replaces_an_existing_output_completely(tmp_path):
    path = tmp_path / "out.zarr"
    with LabelWriter(path, H, W, CLASSES, write_uncertainty=True) as writer:
        writer.write(0, 0, random_mask(seed=1), uncertainty=np.zeros((H, W)))
    new = random_mask(seed=2)
    write_mask(path, new, overwrite=True, zarr_format=2)
    np.testing.assert_array_equal(read_labels(path), new)
    assert not (path / "uncertainty").exists() and not (path / "zarr.json").exists()
    assert os.listdir(tmp_path) == ["out.zarr"]


def test_overwrite_refuses_to_delete_a_folder_that_is_not_a_zarr_store(tmp_path):
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    with pytest.raises(OutputError, match="not written by magnet-cli"):
        LabelWriter(folder, H, W, CLASSES, overwrite=True)
    assert (folder / "thesis.txt").read_text() == "precious"


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_overwrite_refuses_a_zarr_store_magnet_did_not_write(tmp_path, zarr_format):
    path = tmp_path / "other.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=zarr_format).create_array("0", shape=(4, 4), dtype="u1")
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(OutputError, match="not written by magnet-cli"):
        LabelWriter(path, H, W, CLASSES, overwrite=True)
    assert sorted(p.name for p in path.rglob("*")) == before


def test_overwrite_refuses_a_magnet_output_holding_a_users_file(tmp_path):
    path = tmp_path / "out.zarr"
    write_mask(path, random_mask(seed=1))
    (path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        LabelWriter(path, H, W, CLASSES, overwrite=True)
    np.testing.assert_array_equal(read_labels(path), random_mask(seed=1))


def test_disk_full_while_writing_is_an_output_error_naming_the_store(tmp_path, monkeypatch):
    import errno

    from magnet_cli.io import chunk_buffer

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunk_buffer.ChunkAssembler, "write", full)
    path = tmp_path / "out.zarr"
    with pytest.raises(OutputError, match="out.zarr: No space left on device"):
        with LabelWriter(path, H, W, CLASSES) as writer:
            writer.write(0, 0, random_mask())
    assert os.listdir(tmp_path) == []


def test_ngff_metadata_appears_only_when_sealed(tmp_path):
    writer = LabelWriter(tmp_path / "out.zarr", H, W, CLASSES)
    writer.write(0, 0, random_mask())
    before = dict(zarr.open_group(str(writer.partial), mode="r").attrs)
    assert "ome" not in before and before["magnet"]["state"] == "partial"
    levels = writer.seal()
    np.testing.assert_array_equal(levels[0][...], random_mask())
    after = dict(zarr.open_group(str(writer.partial), mode="r").attrs)
    assert "ome" in after and after["magnet"]["state"] == "complete"
    writer.finalize()


def test_abort_removes_everything_written(tmp_path):
    writer = LabelWriter(tmp_path / "out.zarr", H, W, CLASSES, chunk_size=CHUNK, write_probabilities=True)
    writer.write(0, 0, np.ones((100, 100), dtype=np.uint8), np.full((len(CLASSES), 100, 100), 0.2))
    writer.abort()
    writer.abort()  # idempotent
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        writer.write(0, 0, np.ones((1, 1), dtype=np.uint8))


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_an_exception_inside_the_context_manager_leaves_no_output(tmp_path, exception):
    path = tmp_path / "out.zarr"
    with pytest.raises(exception):
        with LabelWriter(path, H, W, CLASSES, chunk_size=CHUNK) as writer:
            writer.write(0, 0, np.ones((100, 100), dtype=np.uint8))
            raise exception()
    assert os.listdir(tmp_path) == []


def test_an_exception_during_overwrite_keeps_the_old_output(tmp_path):
    path = tmp_path / "out.zarr"
    old = random_mask(seed=1)
    write_mask(path, old)
    with pytest.raises(RuntimeError):
        with LabelWriter(path, H, W, CLASSES, overwrite=True) as writer:
            writer.write(0, 0, np.zeros((H, W), dtype=np.uint8))
            raise RuntimeError("model crashed")
    np.testing.assert_array_equal(read_labels(path), old)
    assert os.listdir(tmp_path) == ["out.zarr"]


def test_unwritable_locations_raise_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        LabelWriter(tmp_path / "missing" / "out.zarr", H, W, CLASSES)
    a_file = tmp_path / "out.zarr"
    a_file.write_text("not a folder")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not a directory"):
            LabelWriter(a_file, H, W, CLASSES, overwrite=overwrite)
    with pytest.raises(OutputError):
        LabelWriter(a_file / "inside.zarr", H, W, CLASSES)  # parent is a file
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_a_read_only_folder_raises_output_error(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            LabelWriter(folder / "out.zarr", H, W, CLASSES)
    finally:
        folder.chmod(0o700)


def test_write_rejects_windows_that_are_bugs(tmp_path):
    with LabelWriter(tmp_path / "out.zarr", H, W, CLASSES, write_uncertainty=True) as writer:
        ones = np.ones((10, 10), dtype=np.uint8)
        with pytest.raises(ValueError, match="outside"):
            writer.write(H - 5, 0, ones, uncertainty=ones * 0.1)
        with pytest.raises(ValueError, match="outside"):
            writer.write(-1, 0, ones, uncertainty=ones * 0.1)
        with pytest.raises(ValueError, match="class ids"):
            writer.write(0, 0, ones * len(CLASSES), uncertainty=ones * 0.1)
        with pytest.raises(ValueError, match="integer"):
            writer.write(0, 0, ones.astype(np.float32), uncertainty=ones * 0.1)
        with pytest.raises(ValueError, match="uncertainty"):
            writer.write(0, 0, ones)
        with pytest.raises(ValueError, match="shape"):
            writer.write(0, 0, ones, uncertainty=np.zeros((5, 10)))
        with pytest.raises(ValueError, match=r"\(h, w\)"):
            writer.write(0, 0, ones[None])


def test_units_sharing_chunks_are_merged_from_pieces_at_seal(tmp_path):
    """Two units split every chunk between them; each stores its share as pieces, seal() merges them,
    and a killed writer's half-written temporary piece is never merged."""
    from magnet_cli.classes import default_classes

    rng = np.random.default_rng(3)
    expected = rng.integers(0, 3, (100, 90), dtype=np.uint8)
    partial = tmp_path / "o.zarr.partial-test"
    partial.mkdir()
    writer = LabelWriter(tmp_path / "o.zarr", 100, 90, default_classes(3), chunk_size=32, partial=partial, min_level_size=16)
    writer.write(0, 0, expected[:, :45])  # unit A: the left half
    writer.end_unit("A")
    writer.write(0, 45, expected[:, 45:])  # unit B: the right half
    writer.end_unit("B")
    pieces = sorted((partial / "pieces").rglob("*.npz"))
    assert pieces and {p.stem for p in pieces} == {"A", "B"}
    (pieces[0].parent / ".A.deadbeef.tmp").write_bytes(b"PK\x03\x04 truncated")  # as kill -9 leaves it
    levels = writer.seal()
    assert np.array_equal(levels[0][...], expected)
    assert np.array_equal(levels[1][...], expected[::2, ::2])
    assert not (partial / "pieces").exists()
    writer.finalize()
    assert np.array_equal(read_labels(tmp_path / "o.zarr"), expected)
