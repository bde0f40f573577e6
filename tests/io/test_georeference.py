"""GeoTIFF tags -> affine transform and EPSG code: hand-computed cases, and agreement with rasterio's reading
of the same tags in a real GeoTIFF."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from magnet_cli.io.georeference import crs_name, epsg_code, geo_transform
from magnet_cli.io.tiff import TiffSource

# EPSG:32613 (WGS 84 / UTM zone 13N), 0.5 m x 0.25 m pixels, pixel (0, 0)'s corner at (500000, 4000000).
UTM_KEYS = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32613]
UTM = {
    "ModelPixelScaleTag": [0.5, 0.25, 0.0],
    "ModelTiepointTag": [0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0],
    "GeoKeyDirectoryTag": UTM_KEYS,
}


def test_pixel_scale_and_tiepoint_give_a_north_up_transform():
    assert geo_transform(UTM) == (0.5, 0.0, 500000.0, 0.0, -0.25, 4000000.0)
    assert epsg_code(UTM) == 32613


def test_a_tiepoint_at_another_pixel_moves_the_origin():
    tags = {**UTM, "ModelTiepointTag": [10.0, 4.0, 0.0, 500005.0, 3999999.0, 0.0]}
    assert geo_transform(tags) == (0.5, 0.0, 500000.0, 0.0, -0.25, 4000000.0)


def test_a_transformation_matrix_wins_and_may_rotate():
    matrix = [2.0, 0.5, 0.0, 100.0, 0.25, -3.0, 0.0, 200.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert geo_transform({**UTM, "ModelTransformationTag": matrix}) == (2.0, 0.5, 100.0, 0.25, -3.0, 200.0)


def test_pixel_is_point_moves_the_tiepoint_from_centre_to_corner():
    keys = [1, 1, 0, 2, 1025, 0, 1, 2, 2048, 0, 1, 4326]
    tags = {"ModelPixelScale": [0.1, 0.1, 0.0], "ModelTiepoint": [0, 0, 0, 10.0, 50.0, 0], "GeoKeyDirectory": keys}
    a, b, c, d, e, f = geo_transform(tags)
    assert (a, b, d, e) == (0.1, 0.0, 0.0, -0.1)
    assert (c, f) == pytest.approx((9.95, 50.05))
    assert epsg_code(tags) == 4326  # geographic, names without the Tag suffix


def test_no_affine_georeference_and_no_code():
    assert geo_transform(None) is None and epsg_code(None) is None
    gcps = {"ModelTiepointTag": [0, 0, 0, 1.0, 2.0, 0, 100, 100, 0, 3.0, 4.0, 0]}  # ground control points only
    assert geo_transform(gcps) is None
    user_defined = {**UTM, "GeoKeyDirectoryTag": [1, 1, 0, 1, 3072, 0, 1, 32767]}
    assert epsg_code(user_defined) is None


def test_decoded_geokeys_are_read_when_the_directory_is_missing():
    assert epsg_code({"GeoKeys": {"ProjectedCSTypeGeoKey": 32611}}) == 32611


def test_crs_name_names_the_code():
    assert crs_name(None) is None
    assert crs_name(32613).endswith("(EPSG:32613)") and "UTM zone 13N" in crs_name(32613)


def test_agrees_with_rasterio_on_a_real_geotiff(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    path = tmp_path / "geo.tif"
    extratags = [
        (33550, "d", 3, tuple(UTM["ModelPixelScaleTag"]), True),
        (33922, "d", 6, tuple(UTM["ModelTiepointTag"]), True),
        (34735, "H", len(UTM_KEYS), tuple(UTM_KEYS), True),
    ]
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), extratags=extratags)
    with TiffSource(path) as source:
        georeference = source.georeference
    with rasterio.open(path) as dataset:
        assert geo_transform(georeference) == pytest.approx(tuple(dataset.transform)[:6])
        assert epsg_code(georeference) == dataset.crs.to_epsg()
