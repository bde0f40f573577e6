"""Where an image lies on the map, from its GeoTIFF tags: the pixel-to-map affine transform and the EPSG code.

A source's `georeference` is a dict of GeoTIFF tags named as tifffile names them (`ModelPixelScaleTag`,
`ModelTiepointTag`, `ModelTransformationTag`, `GeoKeyDirectoryTag`; the names without `Tag` are accepted
too). Three small functions read it; none needs GDAL or pyproj (`crs_name` uses rasterio when present).
"""

from __future__ import annotations

import re
from typing import Any

# (a, b, c, d, e, f) in rasterio's (affine's) order: a pixel corner (col, row) lies at
# x = a * col + b * row + c, y = d * col + e * row + f. Pixel (0, 0) covers [0, 1] x [0, 1].
Transform = tuple[float, float, float, float, float, float]

GT_RASTER_TYPE = 1025  # GTRasterTypeGeoKey: 1 RasterPixelIsArea (the default), 2 RasterPixelIsPoint
GEOGRAPHIC_TYPE = 2048  # GeographicTypeGeoKey
PROJECTED_CS_TYPE = 3072  # ProjectedCSTypeGeoKey
USER_DEFINED = 32767  # a key value that says "described by other keys", not an EPSG code
RASTER_PIXEL_IS_POINT = 2
KEY_NAMES = {GT_RASTER_TYPE: "GTRasterTypeGeoKey", GEOGRAPHIC_TYPE: "GeographicTypeGeoKey", PROJECTED_CS_TYPE: "ProjectedCSTypeGeoKey"}


def geo_transform(georeference: dict | None) -> Transform | None:
    """The pixel-corner-to-map transform (see `Transform`), or None when the tags give none (no tags, or
    ground control points without a pixel scale, which no affine transform describes).

    ModelTransformationTag wins over ModelPixelScaleTag + ModelTiepointTag, as in GDAL; a raster whose
    GTRasterTypeGeoKey says RasterPixelIsPoint has its tiepoint at a pixel centre, moved here to the corner."""
    matrix = _numbers(georeference, "ModelTransformationTag")
    scale = _numbers(georeference, "ModelPixelScaleTag")
    tiepoint = _numbers(georeference, "ModelTiepointTag")
    if matrix is not None and len(matrix) >= 16:
        a, b, c, d, e, f = matrix[0], matrix[1], matrix[3], matrix[4], matrix[5], matrix[7]
    elif scale is not None and len(scale) >= 2 and tiepoint is not None and len(tiepoint) >= 6:
        (i, j), (x, y) = tiepoint[0:2], tiepoint[3:5]
        a, b, c, d, e, f = scale[0], 0.0, x - i * scale[0], 0.0, -scale[1], y + j * scale[1]
    else:
        return None
    if _geo_keys(georeference).get(GT_RASTER_TYPE) == RASTER_PIXEL_IS_POINT:
        c, f = c - 0.5 * (a + b), f - 0.5 * (d + e)
    return (a, b, c, d, e, f)


def epsg_code(georeference: dict | None) -> int | None:
    """The EPSG code of the map coordinates (ProjectedCSTypeGeoKey, else GeographicTypeGeoKey), or None
    when the tags name none (a user-defined CRS, or no GeoKeys)."""
    keys = _geo_keys(georeference)
    for key in (PROJECTED_CS_TYPE, GEOGRAPHIC_TYPE):
        value = keys.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < USER_DEFINED:
            return value
    return None


def crs_name(epsg: int | None) -> str | None:
    """A readable name: "WGS 84 / UTM zone 13N (EPSG:32613)" when rasterio knows the code, else "EPSG:32613"."""
    if epsg is None:
        return None
    try:
        from rasterio.crs import CRS

        match = re.match(r'\w+\["([^"]+)"', CRS.from_epsg(epsg).to_wkt())
        return f"{match.group(1)} (EPSG:{epsg})" if match else f"EPSG:{epsg}"
    except Exception:  # rasterio missing, or a code its database does not hold
        return f"EPSG:{epsg}"


def _value(georeference: dict | None, name: str) -> Any:
    tags = georeference or {}
    return tags.get(name, tags.get(name[: -len("Tag")]))


def _numbers(georeference: dict | None, name: str) -> list[float] | None:
    value = _value(georeference, name)
    if value is None:
        return None
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _geo_keys(georeference: dict | None) -> dict[int, Any]:
    """Key id -> value of the short GeoKeys stored in the directory itself (those read here all are),
    falling back to tifffile's decoded `GeoKeys` (by name) when the raw directory is missing."""
    directory = _value(georeference, "GeoKeyDirectoryTag")
    keys: dict[int, Any] = {}
    try:
        entries = [int(v) for v in directory or []]
    except (TypeError, ValueError):
        entries = []
    for start in range(4, len(entries) - 3, 4):
        key, location, _, value = entries[start : start + 4]
        if location == 0:
            keys[key] = value
    if not keys:
        decoded = (georeference or {}).get("GeoKeys") or {}
        keys = {key: decoded[name] for key, name in KEY_NAMES.items() if name in decoded}
    return keys
