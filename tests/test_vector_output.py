"""`magnet segment --vector`: the polygons of the finished mask, rasterized back, agree with the label image;
a georeferenced input gives map coordinates in its CRS (as rasterio reads the input); the library
function takes it too; without the gis extra the option fails first, in one line."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tifffile

from magnet_cli.io.labels import read_labels
from tests.conftest import random_rgb
from tests.test_cli import assert_clean_failure, invoke, segment

pyogrio = pytest.importorskip("pyogrio")
shapely = pytest.importorskip("shapely")
rasterio = pytest.importorskip("rasterio")

UTM_13N_KEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32613)


def rasterized(vector, shape, transform=None) -> np.ndarray:
    from affine import Affine
    from rasterio.features import rasterize

    meta, _, wkb, values = pyogrio.raw.read(vector)
    class_ids = dict(zip(meta["fields"], values))["class_id"].astype(int)
    shapes = zip(shapely.from_wkb(wkb), class_ids)
    return rasterize(shapes, out_shape=shape, fill=255, dtype="uint8", transform=transform or Affine.identity())


def test_a_georeferenced_input_gives_map_coordinates_in_its_crs(bundle_dir, tmp_path):
    image = tmp_path / "utm.tif"
    extratags = [
        (33550, "d", 3, (0.5, 0.5, 0.0), True),
        (33922, "d", 6, (0, 0, 0, 500000.0, 4100000.0, 0), True),
        (34735, "H", len(UTM_13N_KEYS), UTM_13N_KEYS, True),
    ]
    tifffile.imwrite(image, random_rgb(160, 128, seed=4), photometric="rgb", extratags=extratags)
    out, vector = tmp_path / "utm.zarr", tmp_path / "utm.gpkg"
    result = segment(bundle_dir, image, "-o", out, "--vector", vector, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["vector"] == str(vector)
    assert pyogrio.read_info(vector)["crs"] == "EPSG:32613"
    with rasterio.open(image) as source:  # the input's georeferencing as GDAL reads it
        assert source.crs.to_epsg() == 32613
        transform = source.transform
    labels = read_labels(out)
    assert (rasterized(vector, labels.shape, transform) == labels).mean() >= 0.995


def test_a_plain_image_gives_qupath_geojson_in_pixel_corners(bundle_dir, tmp_path):
    from skimage import io as skio

    image = tmp_path / "scene.png"
    skio.imsave(image, random_rgb(150, 200), check_contrast=False)
    out, vector = tmp_path / "scene.zarr", tmp_path / "scene.geojson"
    result = segment(bundle_dir, image, "-o", out, "--vector", vector)
    assert result.exit_code == 0, result.output
    labels = read_labels(out)
    assert (rasterized(vector, labels.shape) == labels).mean() >= 0.995
    features = json.loads(vector.read_text())["features"]
    bounds = shapely.total_bounds(shapely.from_geojson([json.dumps(f["geometry"]) for f in features]))
    assert tuple(bounds) == (0.0, 0.0, 200.0, 150.0)  # x right, y down, pixel corners
    assert all(set(f["properties"]["classification"]) == {"name", "color"} for f in features)


def test_min_area_and_simplify_reach_the_file_through_the_library(bundle_dir, tmp_path):
    from magnet_cli import segment as segment_images
    from magnet_cli.settings import ModelSettings, OutputSettings, RunSettings

    image = tmp_path / "scene.tif"
    tifffile.imwrite(image, random_rgb(128, 128, seed=1), photometric="rgb")

    def polygon_areas(name: str, **extra) -> np.ndarray:
        outputs = OutputSettings(vector=tmp_path / f"{name}.gpkg", **extra)
        [result] = segment_images(
            [image], tmp_path / f"{name}.zarr", model=ModelSettings(model=bundle_dir), outputs=outputs,
            run=RunSettings(progress=False),
        )
        assert result.vector == str(tmp_path / f"{name}.gpkg")
        return shapely.area(shapely.from_wkb(pyogrio.raw.read(result.vector)[2]))

    every = polygon_areas("all")
    smallest = float(np.sort(every)[len(every) // 2])  # drops about half of the polygons, whatever the labels
    big = polygon_areas("big", vector_min_area=smallest, vector_simplify=0.5)
    assert len(big) < len(every) and big.min() >= smallest > every.min()


def test_a_folder_of_inputs_gets_a_geojson_per_image(bundle_dir, tmp_path):
    from magnet_cli.io.vector import is_magnet_vector

    folder = tmp_path / "tiles"
    folder.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(folder / f"{name}.tif", random_rgb(64, 80, seed=len(name)), photometric="rgb")
    result = segment(bundle_dir, folder, "-o", tmp_path / "masks", "--vector", tmp_path / "vectors", "--mode", "downsample")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "vectors").iterdir()) == ["a.geojson", "b.geojson"]
    for name in ("a", "b"):
        vector, labels = tmp_path / "vectors" / f"{name}.geojson", read_labels(tmp_path / "masks" / f"{name}.zarr")
        assert is_magnet_vector(vector) and np.array_equal(rasterized(vector, labels.shape), labels)


def test_without_the_gis_extra_vector_fails_first_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "shapely", None)  # as if not installed
    image = tmp_path / "scene.tif"
    tifffile.imwrite(image, random_rgb(64, 64), photometric="rgb")
    # Before any work: even before the (missing) model is loaded.
    args = ["-o", tmp_path / "o.zarr", "--vector", tmp_path / "o.geojson", "--model", tmp_path / "no-model"]
    result = invoke("segment", image, *args, "--no-progress", "--device", "cpu")
    assert_clean_failure(result, "pip install 'magnet-cli[gis]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
