"""Zarr v2/v3 arrays and OME-Zarr (NGFF 0.4 / 0.5) multiscale images as an ImageSource, read lazily.

Also the small helpers every array-backed reader shares (the TIFF reader reads its tiles through Zarr):
`region_index` and `to_yxc` turn an N-d array with named axes into (h, w, bands) regions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from magnet_cli.errors import InputError
from magnet_cli.io.base import ImageSource, PyramidLevel, check_axes, check_image
from magnet_cli.io.pixel_size import PixelSize, pixel_size
from magnet_cli.io.tile_cache import TileCache

# One-letter axis codes used by the array-backed readers: 'Y' rows, 'X' columns, 'C' bands; any other
# letter is a non-spatial axis (time, z, ...) read at index 0.
BAND_NAMES = {"c", "channel", "channels", "band", "bands", "s", "sample", "samples", "rgb"}
MAX_INFERRED_BANDS = 4  # a plain (H, W, C) or (C, H, W) array is recognised by an axis of at most this size
# Above this many declared pixels an array that stores no chunk at all is refused: every pixel would be the
# fill value, so the size is a header only (a forged 10^7 x 10^7 .zarray). Smaller ones pass, since writers
# that skip empty chunks (zarr 3 by default) legitimately store an all-background mask as metadata only.
EMPTY_ARRAY_MAX_PIXELS = 1 << 26
ZARR_METADATA_FILES = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def region_index(axes: str, shape: tuple[int, ...], y0: int, x0: int, y1: int, x1: int) -> tuple:
    """The index selecting rows y0:y1 and columns x0:x1 (all bands, index 0 elsewhere) of an array."""
    height, width = yx(shape, axes)
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] outside a level of shape {height}x{width}")
    picks = {"Y": slice(y0, y1), "X": slice(x0, x1), "C": slice(None)}
    return tuple(picks.get(axis, 0) for axis in axes)


def yx(sizes: Sequence[int], axes: str) -> tuple[int, int]:
    """The (rows, columns) entries of per-axis sizes (an array's shape, or its chunks' shape)."""
    return int(sizes[axes.index("Y")]), int(sizes[axes.index("X")])


def band_count(array: Any, axes: str) -> int:
    """Samples per pixel that a read returns (the C axis, else 1)."""
    return int(array.shape[axes.index("C")]) if "C" in axes else 1


def to_yxc(data: np.ndarray, axes: str) -> np.ndarray:
    """What `array[region_index(axes, ...)]` returned, as an owned, writable, native-endian, contiguous
    (h, w, bands) array (a view into a read-only memory map is copied out)."""
    kept = [axis for axis in axes if axis in "YXC"]
    if "C" not in kept:
        data, kept = data[..., None], kept + ["C"]
    data = data.transpose([kept.index(axis) for axis in "YXC"])
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    data = np.ascontiguousarray(data)
    return data if data.flags.writeable else data.copy()


def is_zarr_dir(path: Path) -> bool:
    """Whether a folder is a Zarr v2 or v3 array or group."""
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup"))


class ZarrSource(ImageSource):
    """A Zarr array, or the first multiscales image of an OME-Zarr group, read chunk by chunk."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self._tiles = TileCache()
        node = _open_node(path)
        extra: dict[str, Any] = {"zarr_format": node.metadata.zarr_format}
        if isinstance(node, zarr.Group):
            node, image_path = _multiscales_group(path, node)
            arrays, axes, scales, names, version, base_path = _multiscales(path, node)
            array_dir = path / image_path / base_path
            format_name = f"OME-Zarr {version}" if version else "OME-Zarr"
            size = _ngff_pixel_size(multiscales_meta(node)[0][0], base_path, axes)
            extra.update(image=image_path, axes=names)
        else:
            arrays, axes = [node], _plain_axes(path, node)
            scales = [(1.0, 1.0)]
            format_name = f"Zarr v{node.metadata.zarr_format}"
            size = None
            extra["axes"] = axes
            array_dir = path
        base = arrays[0]
        iy, ix = axes.index("Y"), axes.index("X")
        height, width = base.shape[iy], base.shape[ix]
        dtype = np.dtype(base.dtype).newbyteorder("=")
        check_image(path, height, width, dtype)
        levels = []
        for array, (sy, sx) in zip(arrays, scales):
            if array.shape[iy] <= 0 or array.shape[ix] <= 0:
                raise InputError(f"{path}: empty pyramid level of shape {array.shape}")
            if np.dtype(array.dtype).newbyteorder("=") != dtype:
                raise InputError(f"{path}: pyramid levels mix sample types {dtype} and {array.dtype}")
            levels.append(PyramidLevel(array.shape[iy], array.shape[ix], sy, sx))
        bands = base.shape[axes.index("C")] if "C" in axes else 1
        super().__init__(
            path,
            height,
            width,
            bands,
            dtype,
            levels,
            chunks=(base.chunks[iy], base.chunks[ix]),
            format_name=format_name,
            extra=extra,
            problems=_empty_array_problems(array_dir, height * width),
            pixel_size=size,
        )
        self._arrays = arrays
        self._axes = axes

    def read_level(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        array, axes = self._arrays[level], self._axes
        return self._tiles.region(
            level, yx(array.chunks, axes), yx(array.shape, axes), (y0, x0, y1, x1),
            lambda *box: self._read_region(level, *box), array.dtype.itemsize * band_count(array, axes),
        )

    def _read_region(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        array = self._arrays[level]
        index = region_index(self._axes, array.shape, y0, x0, y1, x1)
        try:
            data = np.asarray(array[index])
        except MemoryError:
            raise
        except Exception as exc:  # a corrupt or unreadable chunk: the file's fault, not ours
            raise InputError(f"{self.path}: cannot read level {level} rows {y0}:{y1} columns {x0}:{x1}: {exc}") from exc
        return to_yxc(data, self._axes)

    def close(self) -> None:
        self._arrays = []


# --------------------------------------------------------------------------------------------------
def _open_node(path: Path) -> zarr.Array | zarr.Group:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not is_zarr_dir(path):
        raise InputError(f"{path}: not a Zarr store (no zarr.json, .zarray or .zgroup)")
    try:
        return zarr.open(store=str(path), mode="r")
    except MemoryError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot open as Zarr: {exc}") from exc


def multiscales_meta(group: zarr.Group) -> tuple[list | None, str]:
    attrs = group.attrs.asdict()
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):
        return ome["multiscales"], str(ome.get("version", "0.5"))
    multiscales = attrs.get("multiscales")
    if multiscales:
        version = multiscales[0].get("version", "") if isinstance(multiscales[0], dict) else ""
        return multiscales, str(version)
    return None, ""


def _multiscales_group(path: Path, group: zarr.Group) -> tuple[zarr.Group, str]:
    """The group holding the image: the root itself, or its '0' child (bioformats2raw layout)."""
    if multiscales_meta(group)[0]:
        return group, ""
    try:
        child = group["0"]
    except KeyError:
        child = None
    if isinstance(child, zarr.Group) and multiscales_meta(child)[0]:
        return child, "0"
    members = sorted(name for name, _ in group.members())
    raise InputError(
        f"{path}: a Zarr group without OME-Zarr 'multiscales' metadata; "
        f"point at one of its arrays instead (members: {', '.join(members) or 'none'})"
    )


def _multiscales(
    path: Path, group: zarr.Group
) -> tuple[list[zarr.Array], str, list[tuple[float, float]], list, str, str]:
    """Arrays, one-letter axes, per-level (downsample_y, downsample_x), axis names, NGFF version and the
    finest dataset's path."""
    multiscales, version = multiscales_meta(group)
    image = multiscales[0]
    if not isinstance(image, dict) or not image.get("datasets"):
        raise InputError(f"{path}: OME-Zarr multiscales metadata lists no datasets")
    arrays = []
    for dataset in image["datasets"]:
        _check_dataset_path(path, dataset)
        try:
            array = group[str(dataset["path"])]
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: OME-Zarr dataset {dataset!r} is missing") from exc
        if not isinstance(array, zarr.Array):
            raise InputError(f"{path}: OME-Zarr dataset {dataset['path']!r} is not an array")
        arrays.append(array)
    ndim = arrays[0].ndim
    names = _axis_names(image.get("axes"), ndim)
    if len(names) != ndim or any(array.ndim != ndim for array in arrays):
        raise InputError(f"{path}: OME-Zarr axes {names} do not match the arrays' dimensions")
    axes = _letters(path, names, arrays[0].shape, [_axis_type(image.get("axes"), i) for i in range(ndim)])
    iy, ix = axes.index("Y"), axes.index("X")
    scales = [_scale(dataset, ndim) for dataset in image["datasets"]]
    downsamples = []
    for array, scale in zip(arrays, scales):
        if scale is not None and scales[0] is not None and scales[0][iy] > 0 and scales[0][ix] > 0:
            downsamples.append((scale[iy] / scales[0][iy], scale[ix] / scales[0][ix]))
        else:  # no usable coordinateTransformations: fall back on the shape ratio
            downsamples.append((arrays[0].shape[iy] / array.shape[iy], arrays[0].shape[ix] / array.shape[ix]))
    order = sorted(range(len(arrays)), key=lambda i: max(downsamples[i]))
    if downsamples[order[0]] != downsamples[0]:
        raise InputError(f"{path}: the first OME-Zarr dataset is not the finest resolution")
    base_path = str(image["datasets"][order[0]]["path"])
    return [arrays[i] for i in order], axes, [downsamples[i] for i in order], names, version, base_path


def _ngff_pixel_size(image: dict, base_path: str, axes: str) -> PixelSize | None:
    """The finest dataset's y and x scale in the unit of its axes (NGFF: a UDUNITS-2 name such as
    "micrometer"); None when the axes carry no unit, since a scale without one is not physical."""
    units = [a.get("unit") if isinstance(a, dict) else None for a in image.get("axes") or []]
    dataset = next(d for d in image["datasets"] if str(d["path"]) == base_path)
    scale = _scale(dataset, len(axes))
    iy, ix = axes.index("Y"), axes.index("X")
    if scale is None or len(units) != len(axes) or units[iy] != units[ix]:
        return None
    return pixel_size(scale[iy], scale[ix], units[ix])


def _check_dataset_path(path: Path, dataset: Any) -> None:
    """An NGFF dataset path names an array inside the image group: relative, no '.', '..' or empty parts
    (zarr rejects some of these with a ValueError of its own; '../x' would read outside the image)."""
    name = dataset.get("path") if isinstance(dataset, dict) else None
    if not isinstance(name, str):
        raise InputError(f"{path}: OME-Zarr dataset {dataset!r} has no path")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") for part in parts):
        raise InputError(f"{path}: OME-Zarr dataset path {name!r} leaves the image folder or is malformed")


def _empty_array_problems(array_dir: Path, pixels: int) -> list[str]:
    """A problem phrase when an array above EMPTY_ARRAY_MAX_PIXELS stores no chunk file at all. Stops at
    the first chunk found, so a real store costs a few directory entries."""
    if pixels <= EMPTY_ARRAY_MAX_PIXELS or not array_dir.is_dir():
        return []
    stack = [array_dir]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.name not in ZARR_METADATA_FILES:
                    return []
    return [f"declares {pixels:.3g} pixels but stores no chunk (a size its data cannot back)"]


def _axis_names(axes: Any, ndim: int) -> list[str]:
    if axes is None:  # NGFF 0.1/0.2: always (t, c, z, y, x), trailing dims kept
        return list("tczyx")[-ndim:]
    return [str(a.get("name", "")) if isinstance(a, dict) else str(a) for a in axes]


def _axis_type(axes: Any, index: int) -> str:
    if isinstance(axes, list) and index < len(axes) and isinstance(axes[index], dict):
        return str(axes[index].get("type", ""))
    return ""


def _scale(dataset: dict, ndim: int) -> list[float] | None:
    scale = None
    for transform in dataset.get("coordinateTransformations") or []:
        if isinstance(transform, dict) and transform.get("type") == "scale" and "scale" in transform:
            values = [float(v) for v in transform["scale"]]
            if len(values) == ndim:
                scale = values if scale is None else [a * b for a, b in zip(scale, values)]
    return scale


def _letters(path: Path, names: list[str], shape: tuple[int, ...], types: list[str] | None = None) -> str:
    """Axis names -> one-letter codes ('Y', 'X', 'C', '_' for the rest); check_axes judges the result."""
    types = types or [""] * len(names)
    letters = ""
    for name, kind in zip(names, types):
        lowered = name.lower()
        if lowered == "y":
            letters += "Y"
        elif lowered == "x":
            letters += "X"
        elif lowered in BAND_NAMES or kind == "channel":
            letters += "C"
        else:
            letters += "_"
    check_axes(path, letters, shape, names)
    return letters


def _plain_axes(path: Path, array: zarr.Array) -> str:
    """Axes of a plain array: from dimension names when present, else from the shape."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    if names and len(names) == array.ndim and all(names):
        lowered = [str(n).lower() for n in names]
        if "y" in lowered and "x" in lowered:
            return _letters(path, [str(n) for n in names], array.shape)
    shape = array.shape
    leading = 0
    while array.ndim - leading > 3 and shape[leading] == 1:
        leading += 1
    core = shape[leading:]
    if len(core) == 2:
        return "_" * leading + "YX"
    if len(core) == 3:
        if core[2] <= MAX_INFERRED_BANDS:
            return "_" * leading + "YXC"
        if core[0] <= MAX_INFERRED_BANDS:
            return "_" * leading + "CYX"
    raise InputError(
        f"{path}: cannot tell rows, columns and bands apart in a Zarr array of shape {shape}; "
        f"expected (H, W), (H, W, C) or (C, H, W) with C <= {MAX_INFERRED_BANDS}, or dimension names"
    )
