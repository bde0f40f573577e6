"""The label output: an OME-Zarr multiscale label image written window by window, never whole in memory.

Layout of `<name>.zarr` (DESIGN section 4):

    <name>.zarr/             group: a multiscale label image (NGFF 0.5 on Zarr v3, or NGFF 0.4 on Zarr v2)
      0, 1, ...              uint8/uint16 class ids (y, x); level k is level 0 sampled every 2^k pixels
      probabilities/0        optional (C, y, x) uint8, round(p * 255); its own one-level multiscales
      uncertainty/0          optional (y, x) uint8, round(u * 255); its own one-level multiscales

Every pyramid level is written straight from each window (no second pass), and the whole store is
built in a sibling `<name>.partial-<...>` directory renamed into place by `finalize()`, so nothing
half-written ever sits at the output path. Standalone, the writer names it with a uuid4 (no other run,
same PID in another container included, can share it); `segment` hands it a resumable partial store
(io/partial_store.py) instead, shared by the shards of one run and kept across interruptions.

Units of work (units.py) end with `end_unit()`: the chunks a unit completed are stored, and its share
of chunks that other units complete too goes to `pieces/<array>/<chunk>/<unit>.npz`, merged by
`seal()`. So no chunk is ever written by two units, whichever processes run them.

Ownership: the root's `magnet` attributes carry `format: magnet-cli-labels`, `state` ("partial" until
finalised, then "complete") and `written` (the entries the writer made). `--overwrite` replaces only a
folder that says so and holds nothing else; the NGFF metadata is written at finalise, so a leftover
partial store never looks like a finished label image.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from magnet_cli.classes import ClassInfo
from magnet_cli.errors import InputError, OutputError
from magnet_cli.io.chunk_buffer import ChunkAssembler
from magnet_cli.io.pixel_size import NGFF_UNITS, PixelSize

if TYPE_CHECKING:
    from magnet_cli.io.label_placement import LabelPlacement

AXES_YX = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
AXES_CYX = [{"name": "c", "type": "channel"}, *AXES_YX]
NGFF_VERSION = {3: "0.5", 2: "0.4"}
NODATA_NAME = "no data"  # the image-label property of the no-data label value
OME_KEYS = {"ome", "multiscales", "image-label"}  # attribute keys the writer owns
QUANTIZATION = {"dtype": "uint8", "scale": 1 / 255, "offset": 0.0}  # stored = round(value / scale)
LABELS_FORMAT = "magnet-cli-labels"  # the ownership marker in attributes["magnet"]["format"]
PARTIAL_INFIX = ".partial-"
METADATA_FILES = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata"}
PIECES = "pieces"  # border-chunk shares of finished units, merged at seal()


def level_shapes(height: int, width: int, min_level_size: int) -> list[tuple[int, int]]:
    """Shapes of the nearest-neighbour pyramid: halve (rounding up) until the long side <= min_level_size."""
    if min_level_size < 1:
        raise ValueError(f"min_level_size must be >= 1, got {min_level_size}")
    shapes = [(height, width)]
    while max(shapes[-1]) > min_level_size:
        factor = 1 << len(shapes)
        shapes.append((-(-height // factor), -(-width // factor)))
    return shapes


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 for up to 255 classes, uint16 beyond."""
    return np.dtype(np.uint8 if num_classes <= 255 else np.uint16)


def quantize(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] to uint8 round(v * 255) (clipped), the storage of probabilities and uncertainty."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def partial_path(path: Path) -> Path:
    """The sibling an output is built in before being renamed to `path`: a uuid4, never reused."""
    return path.with_name(f"{path.name}{PARTIAL_INFIX}{uuid.uuid4().hex}")


def leftovers_of(path: Path) -> list[Path]:
    """Partial stores (and half-replaced old outputs) an interrupted run left beside `path`."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefixes = (f"{path.name}{PARTIAL_INFIX}", f"{path.name}.replaced-")
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes))


def magnet_marker(path: Path) -> dict | None:
    """The `magnet` attributes of a label store magnet-cli wrote (partial or complete), else None.
    Read from the metadata file directly: a foreign folder is never opened as a Zarr store."""
    path = Path(path)
    for name in ("zarr.json", ".zattrs"):
        file = path / name
        if file.is_file() and not file.is_symlink():
            try:
                document = json.loads(file.read_text())
            except (OSError, ValueError):
                return None
            attributes = document.get("attributes", {}) if name == "zarr.json" else document
            marker = attributes.get("magnet") if isinstance(attributes, dict) else None
            if isinstance(marker, dict) and marker.get("format") == LABELS_FORMAT:
                return marker
            return None
    return None


def foreign_entries(path: Path) -> list[str] | None:
    """None when `path` is a label store magnet-cli wrote and holds only what it wrote; else the names
    that make it someone else's (all its entries when it carries no marker)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return [path.name]
    entries = sorted(p.name for p in path.iterdir())
    marker = magnet_marker(path)
    if marker is None:
        return entries or None  # an empty folder holds nothing to lose
    written = [str(name) for name in marker.get("written") or []]
    allowed = METADATA_FILES | set(written)
    extra = [name for name in entries if name not in allowed and not name.startswith(tuple(f"{w}." for w in written))]
    return extra or None


def check_finished(path: Path) -> None:
    """Refuse an interrupted run's partial store, or an array inside one (`0`, `probabilities/0`), as a
    mask or an image (`evaluate`, `segment` inputs)."""
    path = Path(path)
    for store in [path, *list(path.parents)[:2]]:
        marker = magnet_marker(store)
        if marker is not None and marker.get("state") != "complete":
            raise InputError(
                f"{path}: an unfinished magnet-cli output (an interrupted run's partial store), not a result; "
                "delete it and re-run"
            )


def remove_output(path: Path) -> None:
    """Remove a label store magnet-cli wrote; refuse (OutputError) anything else."""
    extra = foreign_entries(path)
    if extra:
        raise OutputError(f"{path}: not written by magnet-cli (holds {', '.join(extra[:3])}); refusing to remove it")
    _remove(Path(path))


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold back Ctrl-C, SIGTERM and SIGHUP for a short Zarr write, then deliver them.

    zarr writes on its own event-loop thread: an interrupt raised while the main thread waits leaves
    the write running, and it can recreate files after the clean-up removed them. Off the main thread
    (where handlers cannot be changed) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {number: signal.signal(number, lambda number, frame: held.append(number)) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])


@contextlib.contextmanager
def replace_file_atomically(path: Path) -> Iterator[Path]:
    """Yield a sibling temporary file name; on success rename it onto `path`, on error remove it."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory, not a file")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    temporary = path.with_name(f".{path.name}{PARTIAL_INFIX}{uuid.uuid4().hex}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


class LabelWriter:
    """Writes a label mask (plus optional probabilities and uncertainty) window by window.

    Use as a context manager, or call `finalize()` (output complete and visible) or `abort()` (nothing
    left behind). `write()` must be called from one thread at a time; each full-resolution pixel is
    expected to be written by exactly one window.
    """

    def __init__(
        self,
        path: Path,
        height: int,
        width: int,
        classes: list[ClassInfo],
        *,
        chunk_size: int = 1024,
        zarr_format: int = 3,
        write_probabilities: bool = False,
        write_uncertainty: bool = False,
        attributes: dict | None = None,
        overwrite: bool = False,
        min_level_size: int = 256,
        partial: Path | None = None,
        store_entries: tuple[str, ...] = (),
        placement: LabelPlacement | None = None,
        pixel_size: PixelSize | None = None,
        translation: tuple[float, float] = (0.0, 0.0),
        nodata: int | None = None,
    ) -> None:
        """`partial`: build in this directory (created by the caller, who also owns removing it), opening
        the store already in it if there is one; `store_entries`: the caller's own entries in it;
        `placement`: the labels go beside an OME-Zarr image and follow its levels (label_placement.py);
        `pixel_size`: the physical size of a level-0 label pixel and `translation` where the centre of
        pixel (0, 0) lies, in its unit, written as the NGFF coordinateTransformations (None: pixel units);
        `nodata`: the label value of blank regions (io/blank_mask.py), listed as "no data" with a
        transparent colour."""
        if zarr_format not in NGFF_VERSION:
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
        if height < 1 or width < 1 or chunk_size < 1:
            raise ValueError(f"invalid output geometry {height} x {width}, chunk {chunk_size}")
        if len(classes) < 1 or len(classes) > 65535:
            raise ValueError(f"between 1 and 65535 classes are supported, got {len(classes)}")
        clash = OME_KEYS & set(attributes or {})
        if clash:
            raise ValueError(f"attributes may not set the OME keys {sorted(clash)}")
        self.path = Path(path)
        self.height, self.width = height, width
        self.classes = list(classes)
        self.zarr_format = zarr_format
        self.chunk_size = chunk_size
        self.overwrite = overwrite
        self.dtype = label_dtype(len(classes))
        if nodata is not None and not len(classes) <= nodata <= np.iinfo(self.dtype).max:
            raise ValueError(f"the no-data label {nodata} must lie above the class ids and fit {self.dtype}")
        self.nodata = nodata
        self.placement = placement
        self.pixel_size, self.translation = pixel_size, tuple(float(t) for t in translation)
        if placement is not None:
            if placement.zarr_format != zarr_format:
                raise ValueError(f"labels beside a Zarr v{placement.zarr_format} image must be Zarr v{placement.zarr_format}")
            self.shapes, self.factors = list(placement.shapes), list(placement.factors)
        else:
            self.shapes = level_shapes(height, width, min_level_size)
            self.factors = [(1 << level, 1 << level) for level in range(len(self.shapes))]
        self._check_destination()
        self._owns_partial = partial is None
        self.partial = partial_path(self.path) if partial is None else Path(partial)
        self._store_entries = tuple(store_entries)
        self._state = "open"  # before mkdir: an interrupt anywhere below still removes the partial store
        self._release_arrays()
        try:
            with uninterruptible():
                if self._owns_partial:
                    self.partial.mkdir()
                if magnet_marker(self.partial) is None:
                    self._create_store(write_probabilities, write_uncertainty, attributes or {})
                else:
                    self._open_store(write_probabilities, write_uncertainty)
        except BaseException as error:
            self.abort()
            if isinstance(error, OSError):
                raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None
            raise

    # -- public API ------------------------------------------------------------------------------

    def write(
        self,
        y0: int,
        x0: int,
        labels: np.ndarray,
        probabilities: np.ndarray | None = None,
        uncertainty: np.ndarray | None = None,
    ) -> None:
        """Store one window at full-resolution offset (y0, x0), and its samples on every pyramid level."""
        if self._state != "open":
            raise RuntimeError(f"LabelWriter for {self.path} is {self._state}; write() needs an open writer")
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty (h, w) array, got shape {labels.shape}")
        h, w = labels.shape
        y0, x0 = int(y0), int(x0)
        if y0 < 0 or x0 < 0 or y0 + h > self.height or x0 + w > self.width:
            raise ValueError(
                f"window ({y0}, {x0}) + {h} x {w} lies outside the {self.height} x {self.width} output"
            )
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        low, high = int(labels.min()), int(labels.max())
        if self.nodata is not None and high == self.nodata:  # blank pixels: the rest must be class ids
            high = int(labels[labels != self.nodata].max(initial=0))
        if low < 0 or high >= len(self.classes):
            raise ValueError(f"class ids must lie in [0, {len(self.classes)}), got [{low}, {high}]")
        if self._probabilities is not None:
            if probabilities is None:
                raise ValueError("this writer stores probabilities: write() needs them")
            probabilities = np.asarray(probabilities)
            expected = (len(self.classes), h, w)
            if probabilities.shape != expected:
                raise ValueError(f"probabilities must have shape {expected}, got {probabilities.shape}")
        if self._uncertainty is not None:
            if uncertainty is None:
                raise ValueError("this writer stores uncertainty: write() needs it")
            uncertainty = np.asarray(uncertainty)
            if uncertainty.shape != (h, w):
                raise ValueError(f"uncertainty must have shape {(h, w)}, got {uncertainty.shape}")

        try:
            self._write(y0, x0, labels.astype(self.dtype, copy=False), probabilities, uncertainty)
        except OSError as error:  # disk full, read-only or vanished target: one line naming the output
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None

    def _write(
        self, y0: int, x0: int, labels: np.ndarray, probabilities: np.ndarray | None, uncertainty: np.ndarray | None
    ) -> None:
        h, w = labels.shape
        for (fy, fx), (level_h, level_w), array in zip(self.factors, self.shapes, self._levels):
            dy, dx = -y0 % fy, -x0 % fx  # first row/column in the window on this level's grid
            if dy >= h or dx >= w:
                continue
            ty, tx = (y0 + dy) // fy, (x0 + dx) // fx
            # A parent image's level may round its size down: samples past its edge are dropped.
            block = labels[dy::fy, dx::fx][: level_h - ty, : level_w - tx]
            if block.size:
                array.write((ty, tx), block)
        if self._probabilities is not None:
            self._probabilities.write((0, y0, x0), quantize(probabilities))
        if self._uncertainty is not None:
            self._uncertainty.write((y0, x0), quantize(uncertainty))

    def end_unit(self, name: str) -> None:
        """A unit of work is done: store its share of the chunks it did not complete as pieces (each a
        file renamed into place), so that the unit's output is all on disk when this returns."""
        try:
            for array_path, assembler in self._named_assemblers():
                for key, buffer, written in assembler.take_open():
                    rows, cols = np.nonzero(written.reshape(-1, *written.shape[-2:]).any(axis=0))
                    box = (slice(None),) * (written.ndim - 2) + (
                        slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
                    )
                    folder = self.partial / PIECES / array_path.replace("/", "_") / ".".join(map(str, key))
                    folder.mkdir(parents=True, exist_ok=True)
                    temporary = folder / f".{name}.{uuid.uuid4().hex}.tmp"  # a killed writer's is never merged
                    origin = np.array([b.start or 0 for b in box], dtype=np.int64)
                    with open(temporary, "wb") as handle:
                        np.savez_compressed(handle, origin=origin, data=buffer[box], mask=written[box])
                    os.replace(temporary, folder / f"{name}.npz")
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None

    def _merge_pieces(self) -> None:
        """Write every chunk shared by several units from their pieces (all units are done)."""
        root = self.partial / PIECES
        if not root.is_dir():
            return
        for array_path, assembler in self._named_assemblers():
            folder = root / array_path.replace("/", "_")
            if not folder.is_dir():
                continue
            for chunk in sorted(folder.iterdir()):
                key = tuple(int(k) for k in chunk.name.split("."))
                region = assembler.region(key)
                buffer = np.asarray(assembler.array[region])
                for piece in sorted(chunk.glob("[!.]*.npz")):
                    with np.load(piece) as saved:
                        origin, data, mask = saved["origin"], saved["data"], saved["mask"]
                    where = tuple(slice(int(o), int(o) + n) for o, n in zip(origin, data.shape))
                    buffer[where] = np.where(mask, data, buffer[where])
                with uninterruptible():
                    assembler.array[region] = buffer
        shutil.rmtree(root, ignore_errors=True)

    def finalize(self) -> Path:
        """Make the output complete and visible at `path` (replacing an old one only with overwrite)."""
        if self._state == "finalized":
            return self.path
        if self._state != "open":
            raise RuntimeError(f"LabelWriter for {self.path} was aborted")
        if os.path.lexists(self.path) and not self.overwrite:
            raise OutputError(
                f"{self.path} appeared while writing; pass --overwrite to replace it "
                f"(the finished output is in {self.partial})"
            )
        self.seal()
        self._release_arrays()
        replaced = self.path.with_name(f"{self.path.name}.replaced-{uuid.uuid4().hex}")
        try:
            if os.path.lexists(self.path):
                extra = foreign_entries(self.path)
                if extra:  # something else took the path while we wrote: never replace it
                    raise OutputError(
                        f"{self.path}: not written by magnet-cli (holds {', '.join(extra[:3])}); refusing to "
                        f"replace it (the finished output is in {self.partial})"
                    )
                os.rename(self.path, replaced)
                try:
                    os.rename(self.partial, self.path)
                except OSError:
                    os.rename(replaced, self.path)  # put the old output back
                    raise
                _remove(replaced)
            else:
                os.rename(self.partial, self.path)
        except OSError as error:
            raise OutputError(f"cannot move the finished output to {self.path}: {error.strerror or error}") from None
        self._state = "finalized"
        return self.path

    def seal(self) -> list[zarr.Array]:
        """Flush every chunk and write the NGFF metadata: the store is complete, still under its partial
        name. Returns the label levels (finest first), for side outputs written before publishing."""
        if self._state != "open":
            raise RuntimeError(f"LabelWriter for {self.path} is {self._state}; seal() needs an open writer")
        if not self._sealed:
            try:
                self._merge_pieces()
                for assembler in self._assemblers():
                    assembler.flush()
                written = [name for name in self._marker["written"] if name not in (PIECES, *self._store_entries)]
                marker = {**self._marker, "state": "complete", "written": written}
                with uninterruptible():
                    self._root.attrs.update({**self._ngff, "magnet": marker})
            except OSError as error:
                raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None
            self._sealed = True
        return [self._root[str(level)] for level in range(len(self.shapes))]

    def abort(self) -> None:
        """Remove everything written so far; the output path is left as it was. Safe to call twice."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._release_arrays()
        if self._owns_partial:  # else the partial store's owner decides (an interrupted run keeps it)
            shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self) -> LabelWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()  # KeyboardInterrupt included: it reaches __exit__ like any exception

    # -- internals -------------------------------------------------------------------------------

    def _check_destination(self) -> None:
        path = self.path
        if os.path.lexists(path):
            if not path.is_dir() or path.is_symlink():
                raise OutputError(f"{path} exists and is not a directory; choose another output path")
            if not self.overwrite:
                raise OutputError(f"{path} already exists; pass --overwrite to replace it")
            extra = foreign_entries(path)
            if extra:
                raise OutputError(
                    f"{path}: not written by magnet-cli (holds {', '.join(extra[:3])}); "
                    "--overwrite replaces only magnet-cli's own outputs"
                )
        if not path.parent.is_dir():
            raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {path}: folder {path.parent} is not writable")

    def _create_store(self, write_probabilities: bool, write_uncertainty: bool, attributes: dict) -> None:
        fmt = self.zarr_format
        root = zarr.open_group(self.partial, mode="w", zarr_format=fmt)
        self._root, self._sealed = root, False
        # Writes go through ChunkAssemblers: each chunk is encoded once, when complete.
        self._levels = [
            ChunkAssembler(self._create_array(root, str(level), shape, self.dtype, ["y", "x"]))
            for level, shape in enumerate(self.shapes)
        ]
        self._ngff = self._ngff_metadata()
        written = [str(level) for level in range(len(self.shapes))]
        written += [name for name, wanted in (("probabilities", write_probabilities), ("uncertainty", write_uncertainty)) if wanted]
        written += [PIECES, *self._store_entries]
        self._marker = {**(attributes.get("magnet") or {}), "format": LABELS_FORMAT, "state": "partial", "written": written}
        root.attrs.update({**attributes, "magnet": self._marker})

        self._probabilities = self._uncertainty = None
        names = [c.name for c in self.classes]
        if write_probabilities:
            group = root.create_group("probabilities")
            shape = (len(self.classes), self.height, self.width)
            self._probabilities = ChunkAssembler(
                self._create_array(group, "0", shape, np.dtype(np.uint8), ["c", "y", "x"])
            )
            group.attrs.update(_side_attributes(fmt, "probabilities", AXES_CYX, {"classes": names}))
        if write_uncertainty:
            group = root.create_group("uncertainty")
            shape = (self.height, self.width)
            self._uncertainty = ChunkAssembler(self._create_array(group, "0", shape, np.dtype(np.uint8), ["y", "x"]))
            group.attrs.update(_side_attributes(fmt, "uncertainty", AXES_YX, {"measure": "1 - (top1 - top2)"}))

    def _ngff_metadata(self) -> dict:
        """The OME attributes written at seal(); until then the root says "partial" and carries none, so
        a leftover never looks done."""
        fmt = self.zarr_format
        placement = self.placement
        if placement is None:
            size = self.pixel_size
            py, px = (size.y, size.x) if size is not None else (1.0, 1.0)
            # Level k samples level 0 at every 2^k-th pixel, from its first: the same translation at every level.
            shift = [{"type": "translation", "translation": list(self.translation)}] if any(self.translation) else []
            transforms = [[{"type": "scale", "scale": [float(fy) * py, float(fx) * px]}, *shift] for fy, fx in self.factors]
            unit = NGFF_UNITS.get(size.unit) if size is not None else None
            axes = [{**axis, "unit": unit} if unit else dict(axis) for axis in AXES_YX]
        else:  # the parent's, so the labels overlay it at every level
            transforms = [list(t) for t in placement.transforms]
            axes = [dict(a) for a in placement.axes]
        datasets = [{"path": str(level), "coordinateTransformations": t} for level, t in enumerate(transforms)]
        multiscale = {
            "name": self.path.name,
            "axes": axes,
            "datasets": datasets,
            "type": "nearest",
            "metadata": {"description": "each level samples level 0 at every f-th pixel in y and x (no filtering), "
                                        f"f = {[list(f) for f in self.factors]}"},
        }
        colors = [{"label-value": i, "rgba": [*map(int, c.color), 255]} for i, c in enumerate(self.classes)]
        properties = [{"label-value": i, "class": c.name} for i, c in enumerate(self.classes)]
        if self.nodata is not None:  # blank regions (--background): transparent, so viewers show the image
            colors.append({"label-value": self.nodata, "rgba": [0, 0, 0, 0]})
            properties.append({"label-value": self.nodata, "class": NODATA_NAME})
        image_label = {
            "colors": colors,
            "properties": properties,
            # Beside its image, the path to it; otherwise the input is usually not an OME-Zarr image.
            "source": {} if placement is None else {"image": placement.source_image},
        }
        # Until seal(), the root says "partial" and carries no NGFF metadata: a leftover never looks done.
        return _ome_attributes(fmt, [multiscale], {"image-label": image_label})

    def _open_store(self, write_probabilities: bool, write_uncertainty: bool) -> None:
        """Open the store an earlier (or a parallel) process of the same run created in `partial`."""
        root = zarr.open_group(self.partial, mode="r+")
        self._root, self._sealed = root, False
        self._marker = dict(root.attrs["magnet"])
        self._ngff = self._ngff_metadata()
        self._levels = [ChunkAssembler(root[str(level)]) for level in range(len(self.shapes))]
        self._probabilities = ChunkAssembler(root["probabilities/0"]) if write_probabilities else None
        self._uncertainty = ChunkAssembler(root["uncertainty/0"]) if write_uncertainty else None

    def _named_assemblers(self) -> list[tuple[str, ChunkAssembler]]:
        named = [(str(level), a) for level, a in enumerate(self._levels)]
        named += [(name, a) for name, a in (("probabilities/0", self._probabilities), ("uncertainty/0", self._uncertainty)) if a is not None]
        return named

    def _create_array(
        self, group: zarr.Group, name: str, shape: tuple[int, ...], dtype: np.dtype, dims: list[str]
    ) -> zarr.Array:
        chunks = tuple([1] * (len(shape) - 2) + [min(self.chunk_size, n) for n in shape[-2:]])
        if self.zarr_format == 3:
            return group.create_array(
                name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, dimension_names=dims,
                compressors=BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
            )
        # NGFF 0.4 stores chunks in nested folders ("/" separator), see its on-disk layout section.
        return group.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
            compressors=numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE),
        )

    def _assemblers(self) -> list[ChunkAssembler]:
        return [a for a in (*self._levels, self._probabilities, self._uncertainty) if a is not None]

    def _release_arrays(self) -> None:
        self._levels, self._probabilities, self._uncertainty = [], None, None


def _ome_attributes(zarr_format: int, multiscales: list[dict], extra: dict) -> dict:
    """NGFF 0.5 nests everything under "ome" with one version; 0.4 puts keys at the top, versioned each."""
    version = NGFF_VERSION[zarr_format]
    if zarr_format == 3:
        return {"ome": {"version": version, "multiscales": multiscales, **extra}}
    return {
        "multiscales": [{"version": version, **m} for m in multiscales],
        **{key: {"version": version, **value} for key, value in extra.items()},
    }


def _side_attributes(zarr_format: int, name: str, axes: list[dict], info: dict) -> dict:
    """Minimal one-level multiscales for the probabilities / uncertainty groups, plus their encoding."""
    dataset = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(axes)}]}
    multiscale = {"name": name, "axes": axes, "datasets": [dataset]}
    return {**_ome_attributes(zarr_format, [multiscale], {}), "magnet": {"quantization": QUANTIZATION, **info}}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


# -- reading back ---------------------------------------------------------------------------------


def multiscales_of(attributes: dict) -> list[dict]:
    """The "multiscales" list of a group's attributes, for NGFF 0.5 ("ome" namespace) and 0.4 alike."""
    return (attributes.get("ome") or {}).get("multiscales") or attributes.get("multiscales") or []


def open_label_levels(label_path: Path) -> list[zarr.Array]:
    """The pyramid arrays of a label image written by `LabelWriter` (or any NGFF multiscale), finest first."""
    label_path = Path(label_path)
    try:
        root = zarr.open_group(label_path, mode="r")
    except (FileNotFoundError, OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError) as error:
        raise InputError(f"{label_path}: not a readable Zarr label image ({error})") from None
    multiscales = multiscales_of(dict(root.attrs))
    if not multiscales or not multiscales[0].get("datasets"):
        raise InputError(f"{label_path}: no OME-NGFF multiscales metadata")
    try:
        return [root[dataset["path"]] for dataset in multiscales[0]["datasets"]]
    except KeyError as error:
        raise InputError(f"{label_path}: multiscales names a missing array {error}") from None


def read_labels(
    label_path: Path, level: int = 0, region: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Class ids of one pyramid level, whole or `region` = (y0, x0, y1, x1) in that level's pixels."""
    levels = open_label_levels(label_path)
    if not 0 <= level < len(levels):
        raise ValueError(f"{label_path} has pyramid levels 0..{len(levels) - 1}, not {level}")
    array = levels[level]
    if region is None:
        return array[...]
    y0, x0, y1, x1 = region
    return array[y0:y1, x0:x1]
