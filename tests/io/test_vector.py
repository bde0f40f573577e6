"""Vector export: polygons read back with pyogrio and shapely, rasterized back with rasterio, agree with the
label image; regions crossing tile edges come out whole; coordinates and CRS follow the input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")
features = pytest.importorskip("rasterio.features")

from magnet_cli.classes import default_classes  # noqa: E402
from magnet_cli.errors import UsageError  # noqa: E402
from magnet_cli.io.vector import (  # noqa: E402
    LAYER, MARKER, MARKER_KEY, is_magnet_vector, region_polygons, require_gis, tile_count, write_vector,
)
from tests.io.conftest import make_labels  # noqa: E402
from tests.io.test_georeference import UTM  # noqa: E402
from tests.io.test_geotiff import RecordingArray  # noqa: E402

CLASSES = default_classes(4)
FORMATS = [".geojson", ".gpkg"]


def blobs(height: int = 230, width: int = 310, seed: int = 0, sigma: float = 6) -> np.ndarray:
    """A mask of smooth random blobs of four classes: regions of many sizes, crossing tile edges, with holes."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((height, width)), sigma)
    return np.digitize(noise, np.quantile(noise, [0.3, 0.6, 0.85])).astype(np.uint8)


def read_back(path: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """(pyogrio's layer info, shapely geometries, field name -> values) of a vector file."""
    meta, _, wkb, values = pyogrio.raw.read(path)
    return pyogrio.read_info(path), shapely.from_wkb(wkb), dict(zip(meta["fields"], values))


def rasterized(path: Path, shape: tuple[int, int], transform=None) -> np.ndarray:
    from affine import Affine

    _, geometries, fields = read_back(path)
    shapes = zip(geometries, fields["class_id"].astype(int))
    return features.rasterize(shapes, out_shape=shape, fill=255, dtype="uint8", transform=transform or Affine.identity())


@pytest.mark.parametrize("suffix", FORMATS)
def test_rasterized_polygons_agree_with_the_labels_pixel_for_pixel(tmp_path, suffix):
    mask = blobs()
    labels = make_labels(tmp_path / "o.zarr", mask, CLASSES)
    path = write_vector(labels, tmp_path / f"o{suffix}", CLASSES, tile=64)  # 4 x 5 tiles
    info, geometries, fields = read_back(path)
    assert info["geometry_type"] == "Polygon" and shapely.is_valid(geometries).all()
    assert np.array_equal(rasterized(path, mask.shape), mask)  # exact: every region, every hole
    names = {c.name for c in CLASSES}
    assert set(fields["class"]) <= names and set(fields["objectType"]) == {"annotation"}
    first = json.loads(fields["classification"][0]) if suffix == ".gpkg" else None
    if first is not None:
        assert first == {"name": fields["class"][0], "color": list(CLASSES[fields["class_id"][0]].color)}
    # Tiling changes nothing: the same regions as one big tile.
    whole = write_vector(labels, tmp_path / f"whole{suffix}", CLASSES, tile=4096)
    assert len(read_back(whole)[1]) == len(geometries)


def test_geojson_carries_qupath_classification_objects(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:25] = 2
    path = write_vector([mask], tmp_path / "o.geojson", CLASSES)
    document = json.loads(path.read_text())
    assert document[MARKER_KEY] == MARKER and "crs" not in document
    regions = {f["properties"]["class"]: f["properties"] for f in document["features"]}
    assert regions["class_2"]["classification"] == {"name": "class_2", "color": list(CLASSES[2].color)}
    assert regions["class_2"]["objectType"] == "annotation" and regions["class_2"]["class_id"] == 2


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_region_across_many_tiles_is_one_polygon_with_its_holes(tmp_path, suffix):
    mask = np.zeros((200, 200), np.uint8)
    mask[10:190, 20:180] = 1  # a ring of class 1 over 4 x 4 tiles of 50 ...
    mask[60:140, 70:130] = 2  # ... around a hole of class 2, itself over 4 tiles
    mask[100:102, 100:102] = 3  # ... around a tiny island of class 3: a hole in class 2
    path = write_vector([mask], tmp_path / f"o{suffix}", CLASSES, tile=50)
    _, geometries, fields = read_back(path)
    by_class = {c: geometries[fields["class_id"] == c] for c in range(4)}
    assert [len(by_class[c]) for c in range(4)] == [1, 1, 1, 1]
    ring, hole, island = by_class[1][0], by_class[2][0], by_class[3][0]
    assert [shapely.get_num_interior_rings(g) for g in (by_class[0][0], ring, hole, island)] == [1, 1, 1, 0]
    assert ring.area == (mask == 1).sum() and hole.area == (mask == 2).sum()
    assert shapely.equals(ring, shapely.box(20, 10, 180, 190).difference(shapely.box(70, 60, 130, 140)))


def test_regions_inside_a_tile_stream_out_before_the_next_tile_is_read():
    mask = np.zeros((100, 150), np.uint8)
    mask[10:20, 10:20] = 1  # inside the first 50 x 50 tile
    mask[40:60, 40:110] = 2  # across four tiles: held back, merged at the end
    array, done = RecordingArray(mask, chunks=(50, 50)), []
    batches = region_polygons(array, tile=50, advance=done.append)
    class_ids, polygons = next(batches)
    assert array.reads == [(50, 50)] and list(class_ids) == [1]
    assert shapely.equals(polygons[0], shapely.box(10, 10, 20, 20))
    rest = list(batches)
    assert len(done) == tile_count(100, 150, 50) == 6
    assert list(rest[-1][0]) == [2] and rest[-1][1][0].area == 20 * 70  # the last batch: merged pieces


def test_pixel_coordinates_are_pixel_corners_x_right_y_down(tmp_path):
    mask = np.zeros((10, 12), np.uint8)
    mask[2, 3] = 1  # row 2, column 3
    mask[6:9, 0:2] = 2
    path = write_vector([mask], tmp_path / "o.gpkg", CLASSES)
    info, geometries, fields = read_back(path)
    assert info["crs"] is None
    assert shapely.equals(geometries[fields["class_id"] == 1][0], shapely.box(3, 2, 4, 3))
    assert shapely.equals(geometries[fields["class_id"] == 2][0], shapely.box(0, 6, 2, 9))


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_georeferenced_mask_gets_map_coordinates_and_its_crs(tmp_path, suffix):
    from affine import Affine

    mask = blobs(120, 90, seed=3)
    path = write_vector([mask], tmp_path / f"o{suffix}", CLASSES, UTM, tile=32)
    info, geometries, _ = read_back(path)
    assert info["crs"] == "EPSG:32613"
    # 0.5 m x 0.25 m pixels from (500000, 4000000), y going south.
    assert tuple(shapely.total_bounds(geometries)) == (500000.0, 4000000.0 - 120 * 0.25, 500000.0 + 90 * 0.5, 4000000.0)
    transform = Affine(0.5, 0.0, 500000.0, 0.0, -0.25, 4000000.0)
    assert np.array_equal(rasterized(path, mask.shape, transform), mask)


def test_min_area_drops_small_regions_and_fills_their_holes(tmp_path):
    mask = np.zeros((60, 60), np.uint8)
    mask[10:50, 10:50] = 1
    mask[20:22, 20:22] = 2  # 4 pixels: a small region and a small hole in class 1
    mask[30:40, 30:40] = 3  # 100 pixels: kept, and so is its hole
    path = write_vector([mask], tmp_path / "o.gpkg", CLASSES, min_area=10)
    _, geometries, fields = read_back(path)
    assert sorted(fields["class_id"]) == [0, 1, 3]
    square = geometries[fields["class_id"] == 1][0]
    assert shapely.get_num_interior_rings(square) == 1 and square.area == 40 * 40 - 100
    unfiltered = read_back(write_vector([mask], tmp_path / "all.gpkg", CLASSES))[2]
    assert sorted(unfiltered["class_id"]) == [0, 1, 2, 3]


def test_simplify_thins_outlines_and_still_agrees(tmp_path):
    mask = blobs(400, 400, seed=5, sigma=12)
    exact = write_vector([mask], tmp_path / "exact.gpkg", CLASSES, tile=128)
    simple = write_vector([mask], tmp_path / "simple.gpkg", CLASSES, tile=128, simplify=0.7)
    vertices = [shapely.get_num_coordinates(read_back(p)[1]).sum() for p in (exact, simple)]
    assert vertices[1] < 0.6 * vertices[0]
    assert (rasterized(simple, mask.shape) == mask).mean() >= 0.995


def test_only_our_files_carry_the_marker(tmp_path):
    mask = np.ones((8, 8), np.uint8)
    ours = [write_vector([mask], tmp_path / f"o{s}", CLASSES) for s in FORMATS]
    assert all(is_magnet_vector(p) for p in ours)
    foreign_json = tmp_path / "t.geojson"
    foreign_json.write_text('{"type": "FeatureCollection", "features": []}')
    foreign_gpkg = tmp_path / "t.gpkg"
    geometry = shapely.to_wkb(np.array([shapely.box(0, 0, 1, 1)]))
    pyogrio.raw.write(foreign_gpkg, geometry, [np.array([1])], ["a"], layer=LAYER, driver="GPKG", geometry_type="Polygon", crs="EPSG:4326")
    # Our GeoPackage with a layer someone added is no longer only ours.
    extended = write_vector([mask], tmp_path / "x.gpkg", CLASSES)
    pyogrio.raw.write(extended, geometry, [np.array([1])], ["a"], layer="mine", driver="GPKG", geometry_type="Polygon", crs="EPSG:4326", append=True)
    assert not any(is_magnet_vector(p) for p in (foreign_json, foreign_gpkg, extended, tmp_path, tmp_path / "none.gpkg"))


def test_missing_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyogrio", None)  # as if not installed
    with pytest.raises(UsageError, match=r"pip install 'magnet-cli\[gis\]'"):
        require_gis()
    with pytest.raises(UsageError, match=r"magnet-cli\[gis\]"):
        write_vector([np.zeros((4, 4), np.uint8)], tmp_path / "o.geojson", CLASSES)
    assert not list(tmp_path.iterdir())
