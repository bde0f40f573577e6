"""Labels beside their image: OUTPUT = IMAGE.zarr/labels/NAME inside an OME-Zarr image (NGFF 0.4 or 0.5).

The NGFF labels layout asks three things of such a label image, which this module reads from the parent
and `LabelWriter` then follows:
- its pyramid has the parent's levels: the same count, each level the parent's (y, x) size, with the
  parent's scale and translation for y and x (so it overlays the image in napari at every level);
- `image-label.source.image` points at the parent ("../../");
- NAME is listed in the `labels` attribute of the parent's `labels` group (created when missing).
Only `labels/NAME` and the `labels` list are written; the parent's own arrays and metadata are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zarr

from magnet_cli.errors import OutputError
from magnet_cli.io.labels import uninterruptible
from magnet_cli.io.zarr_source import is_zarr_dir, multiscales_meta

LABELS_GROUP = "labels"
SOURCE_IMAGE = "../../"  # from IMAGE.zarr/labels/NAME back to IMAGE.zarr


@dataclass(frozen=True)
class LabelPlacement:
    """Where a label image goes inside an OME-Zarr image, and the parent geometry it must follow."""

    image: Path  # the parent image group
    name: str
    zarr_format: int  # the parent's: a Zarr v2 image (NGFF 0.4) takes v2 labels
    shapes: tuple[tuple[int, int], ...]  # the parent's (y, x) size per level, finest first
    factors: tuple[tuple[int, int], ...]  # level-0 pixels per level pixel in (y, x)
    axes: tuple[dict, ...]  # the parent's y and x axes (names, types, units)
    transforms: tuple[tuple[dict, ...], ...]  # per level: the parent's transformations, y and x only

    @property
    def labels_group(self) -> Path:
        return self.image / LABELS_GROUP

    @property
    def source_image(self) -> str:
        """`image-label.source.image`: the parent, relative to the label image."""
        return SOURCE_IMAGE


def find_placement(output: Path) -> LabelPlacement | None:
    """The placement when `output` is NAME in the `labels` folder of an OME-Zarr image; None otherwise."""
    output = Path(output)
    image = output.parent.parent
    if output.parent.name != LABELS_GROUP or not is_zarr_dir(image):
        return None
    try:
        group = zarr.open_group(image, mode="r")
    except Exception:  # not a group (an array, or unreadable): not an image to put labels in
        return None
    multiscales, _version = multiscales_meta(group)
    if not multiscales or not isinstance(multiscales[0], dict):
        return None
    return _placement(output, image, group, multiscales[0])


def _placement(output: Path, image: Path, group: zarr.Group, multiscale: dict) -> LabelPlacement:
    where = f"{output}: labels beside the OME-Zarr image {image}"
    names = [str(a.get("name", "")) if isinstance(a, dict) else str(a) for a in multiscale.get("axes") or []]
    if "y" not in names or "x" not in names:
        raise OutputError(f"{where}: the image has no y and x axes (axes {names})")
    iy, ix = names.index("y"), names.index("x")
    arrays = [group[str(d["path"])] for d in multiscale["datasets"]]
    for index, axis in enumerate(names):  # 2-D labels: every other axis must be channels or of size 1
        kind = (multiscale["axes"][index] or {}).get("type") if isinstance(multiscale["axes"][index], dict) else None
        if index not in (iy, ix) and kind != "channel" and arrays[0].shape[index] != 1:
            raise OutputError(f"{where}: its {axis!r} axis has {arrays[0].shape[index]} planes; only 2-D images "
                              "(with channels) take labels from magnet-cli")
    shapes = tuple((int(a.shape[iy]), int(a.shape[ix])) for a in arrays)
    height, width = shapes[0]
    factors = []
    for h, w in shapes:
        fy, fx = max(1, round(height / h)), max(1, round(width / w))
        if h not in (height // fy, -(-height // fy)) or w not in (width // fx, -(-width // fx)):
            raise OutputError(f"{where}: level {h} x {w} is not a whole-number downsampling of {height} x {width}")
        factors.append((fy, fx))
    transforms = tuple(
        tuple(_yx_transform(t, iy, ix) for t in d.get("coordinateTransformations") or [])
        for d in multiscale["datasets"]
    )
    axes = tuple(multiscale["axes"][i] if isinstance(multiscale["axes"][i], dict) else {"name": names[i]} for i in (iy, ix))
    return LabelPlacement(image, output.name, int(group.metadata.zarr_format), shapes, tuple(factors), axes, transforms)


def _yx_transform(transform: dict, iy: int, ix: int) -> dict:
    """The y and x entries of a scale or translation (NGFF: one value per axis)."""
    kind = transform.get("type")
    values = transform.get(kind) if kind in ("scale", "translation") else None
    if not isinstance(values, list):
        return {"type": "scale", "scale": [1.0, 1.0]} if kind == "scale" else dict(transform)
    return {"type": kind, kind: [float(values[iy]), float(values[ix])]}


def check_fits(placement: LabelPlacement, height: int, width: int, source: Path) -> None:
    """The input must be the size of the image its labels go beside."""
    if placement.shapes[0] != (height, width):
        h, w = placement.shapes[0]
        raise OutputError(
            f"{placement.image / LABELS_GROUP / placement.name}: the image is {h} x {w} but {source} is "
            f"{height} x {width}; labels beside an image must match its size"
        )


def prepare_labels_folder(placement: LabelPlacement) -> None:
    """The `labels` folder, where the partial store is built (its group metadata comes at `register`)."""
    try:
        placement.labels_group.mkdir(exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot write {placement.labels_group}: {error.strerror or error}") from None


def register(placement: LabelPlacement) -> None:
    """List NAME in the labels group's `labels` attribute (creating the group if it has no metadata),
    keeping every other entry and attribute as it was."""
    folder = placement.labels_group
    with uninterruptible():
        # "a": the group as it is, or (a bare folder) new group metadata beside the entries already there.
        group = zarr.open_group(folder, mode="a", zarr_format=placement.zarr_format)
        attributes = dict(group.attrs)
        if placement.zarr_format == 3:
            ome = dict(attributes.get("ome") or {})
            ome.setdefault("version", "0.5")
            ome["labels"] = _with_name(ome.get("labels"), placement.name)
            group.attrs.update({"ome": ome})
        else:
            group.attrs.update({"labels": _with_name(attributes.get("labels"), placement.name)})


def _with_name(names: object, name: str) -> list[str]:
    listed = [str(n) for n in names] if isinstance(names, list) else []
    return listed if name in listed else [*listed, name]
