"""Where an image lies on the map, from its GeoTIFF tags: the pixel-to-map affine transform and the EPSG code.

A source's `georeference` is a dict of GeoTIFF tags named as tifffile names them (`ModelPixelScaleTag`,
`ModelTiepointTag`, `ModelTransformationTag`, `GeoKeyDirectoryTag`; the names without `Tag` are accepted
too). Three small functions read it; none needs GDAL or pyproj (`crs_name` uses rasterio when present).
"""

from __future__ import annotations

import math
import re
from typing import Any

from magnet_cli.io.pixel_size import PixelSize, pixel_size

# (a, b, c, d, e, f) in rasterio's (affine's) order: a pixel corner (col, row) lies at
# x = a * col + b * row + c, y = d * col + e * row + f. Pixel (0, 0) covers [0, 1] x [0, 1].
Transform = tuple[float, float, float, float, float, float]

GT_RASTER_TYPE = 1025  # GTRasterTypeGeoKey: 1 RasterPixelIsArea (the default), 2 RasterPixelIsPoint
GEOGRAPHIC_TYPE = 2048  # GeographicTypeGeoKey
PROJECTED_CS_TYPE = 3072  # ProjectedCSTypeGeoKey
PROJ_LINEAR_UNITS = 3076  # ProjLinearUnitsGeoKey: 9001 metre, 9002 foot, 9003 US survey foot
USER_DEFINED = 32767  # a key value that says "described by other keys", not an EPSG code
RASTER_PIXEL_IS_POINT = 2
KEY_NAMES = {
    GT_RASTER_TYPE: "GTRasterTypeGeoKey", GEOGRAPHIC_TYPE: "GeographicTypeGeoKey",
    PROJECTED_CS_TYPE: "ProjectedCSTypeGeoKey", PROJ_LINEAR_UNITS: "ProjLinearUnitsGeoKey",
}
LINEAR_UNITS = {9001: "m", 9002: "ft", 9003: "ft"}  # EPSG unit codes of ProjLinearUnitsGeoKey


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


def map_pixel_size(georeference: dict | None) -> PixelSize | None:
    """The ground sample distance in map units: metres (or feet) for a projected CRS, degrees for a
    geographic one; None without a transform or when the GeoKeys name no CRS (the unit is then unknown)."""
    transform = geo_transform(georeference)
    keys = _geo_keys(georeference)
    if transform is None:
        return None
    if PROJECTED_CS_TYPE in keys:
        unit = LINEAR_UNITS.get(keys.get(PROJ_LINEAR_UNITS, 9001))
    elif GEOGRAPHIC_TYPE in keys:
        unit = "deg"
    else:
        unit = None
    a, b, _, d, e, _ = transform
    return pixel_size(math.hypot(b, e), math.hypot(a, d), unit)


def scaled_transform(transform: Transform | None, fy: float, fx: float) -> Transform | None:
    """The transform of an image whose pixels are fy x fx pixels of the one `transform` places; for None
    (no georeference) the pixel-to-level-0 scaling itself, or None when there is none to do."""
    if transform is None:
        return None if (fy, fx) == (1.0, 1.0) else (fx, 0.0, 0.0, 0.0, fy, 0.0)
    a, b, c, d, e, f = transform
    return (a * fx, b * fy, c, d * fx, e * fy, f)


def scaled_georeference(georeference: dict | None, fy: float, fx: float) -> dict | None:
    """GeoTIFF tags for an image whose pixels are fy x fx pixels of the georeferenced one: the same CRS
    and origin, the pixel scale (or transformation matrix) multiplied, raster type area (pixel corners)."""
    transform = geo_transform(georeference)
    if transform is None or (fy, fx) == (1.0, 1.0):
        return georeference
    a, b, c, d, e, f = scaled_transform(transform, fy, fx)  # type: ignore[misc]
    tags = {
        k: v for k, v in (georeference or {}).items()
        if k.removesuffix("Tag") not in ("ModelPixelScale", "ModelTiepoint", "ModelTransformation")
    }
    if b == 0 and d == 0 and a > 0 and e < 0:
        tags["ModelPixelScaleTag"] = [a, -e, 0.0]
        tags["ModelTiepointTag"] = [0.0, 0.0, 0.0, c, f, 0.0]
    else:
        tags["ModelTransformationTag"] = [a, b, 0.0, c, d, e, 0.0, f, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    directory = _value(georeference, "GeoKeyDirectoryTag")
    if directory:  # the corner transform above is RasterPixelIsArea's
        entries = [int(v) for v in directory]
        for start in range(4, len(entries) - 3, 4):
            if entries[start] == GT_RASTER_TYPE and entries[start + 1] == 0:
                entries[start + 3] = 1
        tags = {k: v for k, v in tags.items() if k.removesuffix("Tag") != "GeoKeyDirectory"}
        tags["GeoKeyDirectoryTag"] = entries
    return tags


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
