"""`magnet evaluate`: accuracy of predicted masks against ground truth, streamed tile by tile.

Masks of any size and format (OME-Zarr labels as `segment` writes them, Zarr, TIFF, PNG) are read in
tiles of at most TILE x TILE pixels (plus a halo of `tolerance + 1` pixels for boundaries), so memory
does not depend on the mask size. Per tile we add to a confusion matrix and to boundary match counts;
the scores are computed once from those sums, so a data set's figures are pixel-weighted over all its
images (as Cityscapes-style benchmarks and the paper report them).

Boundary F-score (Csurka et al. 2013; the "BF" of semantic-segmentation benchmarks): a pixel is on the
boundary of class c when it holds c and one of its 4 neighbours holds another class (neighbours
outside the image or on an ignored truth pixel do not count). A predicted boundary pixel of class c
is matched when a true boundary pixel of c lies within `tolerance` pixels (Chebyshev distance), and
the other way round; per class, precision = matched predicted / predicted boundary pixels, recall =
matched true / true boundary pixels, F = 2PR / (P + R). Thin structures are mostly boundary, so this
is where methods that keep fine detail differ.

Predicted no-data (the label value `segment --background` writes for blank regions, read from the
prediction's `magnet` metadata or its GeoTIFF GDAL_NODATA tag) is no class: those pixels are left out of
every score, and the share of scored truth pixels they cover is reported as `unsegmented_share`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from magnet_cli.classes import ClassInfo, classes_from_records, default_classes, parse_classes
from magnet_cli.errors import InputError, UsageError
from magnet_cli.io.base import ImageSource
from magnet_cli.io.open import list_images, open_image

IGNORE_INDEX = 255
TILE = 2048
DEFAULT_TOLERANCE = 2
MAX_BOUNDARY_TOLERANCE = 64  # the boundary match dilates by this radius: each pixel costs its square
MASK_SUFFIXES = (".zarr", ".ome", ".tif", ".tiff", ".png", ".jpg", ".jpeg")


# --- pure metrics -----------------------------------------------------------------------------------
def confusion(predicted: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(C, C) int64 counts, rows = true class, columns = predicted; ignored pixels skipped."""
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[valid].to(torch.int64) * num_classes + predicted[valid].to(torch.int64)
    return torch.bincount(index.cpu(), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_iou(matrix: torch.Tensor | np.ndarray) -> list[float | None]:
    """IoU of each class from a confusion matrix; None for a class in neither truth nor prediction."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    return [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(len(tp))]


def mean_iou(matrix: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the prediction."""
    present = [iou for iou in class_iou(matrix) if iou is not None]
    return float(np.mean(present)) if present else 0.0


def pixel_accuracy(matrix: torch.Tensor | np.ndarray) -> float:
    m = np.asarray(matrix, dtype=np.float64)
    total = m.sum()
    return float(np.trace(m) / total) if total > 0 else 0.0


def frequency_weighted_iou(matrix: torch.Tensor | np.ndarray) -> float:
    """Sum over classes of (true pixel share) x IoU."""
    m = np.asarray(matrix, dtype=np.float64)
    total = m.sum()
    if total == 0:
        return 0.0
    frequency = m.sum(1) / total
    return float(sum(f * (iou or 0.0) for f, iou in zip(frequency, class_iou(m))))


@dataclass
class BoundaryCounts:
    """Per-class boundary pixel counts: predicted, predicted matched, true, true matched."""

    predicted: np.ndarray
    predicted_matched: np.ndarray
    truth: np.ndarray
    truth_matched: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> BoundaryCounts:
        return cls(*(np.zeros(num_classes, np.int64) for _ in range(4)))

    def __iadd__(self, other: BoundaryCounts) -> BoundaryCounts:
        for name in ("predicted", "predicted_matched", "truth", "truth_matched"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def f_scores(self) -> list[float | None]:
        """Boundary F-score per class; None where the class has no boundary in truth or prediction."""
        scores: list[float | None] = []
        for p, pm, t, tm in zip(self.predicted, self.predicted_matched, self.truth, self.truth_matched):
            if p == 0 and t == 0:
                scores.append(None)
                continue
            precision = pm / p if p else 0.0
            recall = tm / t if t else 0.0
            scores.append(float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0)
        return scores


def boundary_map(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pixels (of a valid pixel) with a valid 4-neighbour of another label: (H, W) bool."""
    edge = torch.zeros_like(valid)
    differs_y = (labels[1:] != labels[:-1]) & valid[1:] & valid[:-1]
    differs_x = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    edge[1:] |= differs_y
    edge[:-1] |= differs_y
    edge[:, 1:] |= differs_x
    edge[:, :-1] |= differs_x
    return edge


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius == 0:
        return mask
    grown = F.max_pool2d(mask[None, None].to(torch.float32), 2 * radius + 1, stride=1, padding=radius)
    return grown[0, 0] > 0


def boundary_counts(
    predicted: torch.Tensor,
    truth: torch.Tensor,
    num_classes: int,
    ignore_index: int,
    tolerance: int,
    core: tuple[int, int, int, int] | None = None,
) -> BoundaryCounts:
    """Boundary counts of the pixels in `core` = (y0, x0, y1, x1) of a tile whose margin around the
    core supplies the neighbours and the matches (the whole tile when `core` is None)."""
    height, width = truth.shape
    y0, x0, y1, x1 = core if core is not None else (0, 0, height, width)
    valid = truth != ignore_index
    predicted_edge = boundary_map(predicted, valid)
    truth_edge = boundary_map(truth, valid)
    counts = BoundaryCounts.zeros(num_classes)
    inner = (slice(y0, y1), slice(x0, x1))
    for c in range(num_classes):
        pred_c = predicted_edge & (predicted == c)
        true_c = truth_edge & (truth == c)
        if not bool(pred_c.any()) and not bool(true_c.any()):
            continue
        near_true = _dilate(true_c, tolerance)
        near_pred = _dilate(pred_c, tolerance)
        counts.predicted[c] = int(pred_c[inner].sum())
        counts.predicted_matched[c] = int((pred_c & near_true)[inner].sum())
        counts.truth[c] = int(true_c[inner].sum())
        counts.truth_matched[c] = int((true_c & near_pred)[inner].sum())
    return counts


# --- scores -----------------------------------------------------------------------------------------
@dataclass
class Scores:
    """Accumulated counts of one or more mask pairs and the scores computed from them."""

    classes: list[ClassInfo]
    matrix: np.ndarray
    boundary: BoundaryCounts
    tolerance: int = DEFAULT_TOLERANCE
    unsegmented: int = 0  # truth pixels (not ignored) the prediction left as no data

    @classmethod
    def empty(cls, classes: list[ClassInfo], tolerance: int = DEFAULT_TOLERANCE) -> Scores:
        n = len(classes)
        return cls(classes, np.zeros((n, n), np.int64), BoundaryCounts.zeros(n), tolerance)

    def add(self, other: Scores) -> None:
        self.matrix += other.matrix
        self.boundary += other.boundary
        self.unsegmented += other.unsegmented

    @property
    def miou(self) -> float:
        return mean_iou(self.matrix)

    def to_dict(self) -> dict:
        ious, bfs = class_iou(self.matrix), self.boundary.f_scores()
        present_bf = [f for f in bfs if f is not None]
        return {
            "miou": self.miou,
            "pixel_accuracy": pixel_accuracy(self.matrix),
            "fw_iou": frequency_weighted_iou(self.matrix),
            "boundary_f": float(np.mean(present_bf)) if present_bf else None,
            "boundary_tolerance": self.tolerance,
            "pixels": int(self.matrix.sum()),
            "unsegmented_pixels": self.unsegmented,
            "unsegmented_share": self.unsegmented / max(1, self.unsegmented + int(self.matrix.sum())),
            "per_class": [
                {"class": info.name, "iou": iou, "boundary_f": bf, "true_pixels": int(self.matrix[c].sum())}
                for c, (info, iou, bf) in enumerate(zip(self.classes, ious, bfs))
            ],
        }


# --- streaming over mask files ----------------------------------------------------------------------
def tiles(height: int, width: int, size: int) -> Iterator[tuple[int, int, int, int]]:
    """Row-major tiles (y0, x0, y1, x1) of at most size x size covering the mask."""
    for y in range(0, height, size):
        for x in range(0, width, size):
            yield y, x, min(y + size, height), min(x + size, width)


def _read_ids(source: ImageSource, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    raw = source.read_level(0, y0, x0, y1, x1)
    if raw.ndim == 3:
        raw = raw[:, :, 0]
    return raw


def _check_mask(source: ImageSource, role: str) -> None:
    if source.bands != 1:
        raise InputError(f"{source.path}: a {role} mask must hold one band of class ids, found {source.bands} bands")
    if source.dtype.kind not in "iub":
        raise InputError(f"{source.path}: a {role} mask must hold integer class ids, found {source.dtype}")


def _check_range(ids: np.ndarray, num_classes: int, ignore_index: int | None, path: Path, role: str) -> None:
    bad = ids >= num_classes
    if ignore_index is not None:
        bad &= ids != ignore_index
    if ids.dtype.kind == "i":
        bad |= ids < 0
    if bad.any():
        found = sorted(set(np.unique(ids[bad]).tolist()))[:5]
        allowed = f"0..{num_classes - 1}" + (f" and ignore index {ignore_index}" if ignore_index is not None else "")
        raise InputError(f"{path}: {role} class id(s) {found} outside {allowed}; give --classes or --model with more classes")


def evaluate_pair(
    predicted_path: str | Path,
    truth_path: str | Path,
    classes: list[ClassInfo],
    *,
    ignore_index: int = IGNORE_INDEX,
    tolerance: int = DEFAULT_TOLERANCE,
    tile: int = TILE,
    advance: Callable[[int], None] | None = None,
) -> Scores:
    """Scores of one predicted mask against its truth, read tile by tile."""
    if tolerance < 0:
        raise UsageError(f"--boundary-tolerance {tolerance}: must be 0 or more")
    num_classes = len(classes)
    scores = Scores.empty(classes, tolerance)
    halo = tolerance + 1
    from magnet_cli.io.labels import check_finished

    check_finished(predicted_path)  # an interrupted run's partial store is not a result
    with open_image(predicted_path) as predicted, open_image(truth_path) as truth:
        _check_mask(predicted, "predicted")
        _check_mask(truth, "truth")
        if (predicted.height, predicted.width) != (truth.height, truth.width):
            raise InputError(
                f"{predicted.path}: prediction is {predicted.height} x {predicted.width} but truth "
                f"{truth.path} is {truth.height} x {truth.width}"
            )
        height, width = truth.height, truth.width
        nodata = prediction_nodata(predicted)
        for y0, x0, y1, x1 in tiles(height, width, tile):
            ry0, rx0, ry1, rx1 = max(0, y0 - halo), max(0, x0 - halo), min(height, y1 + halo), min(width, x1 + halo)
            pred_ids = _read_ids(predicted, ry0, rx0, ry1, rx1)
            true_ids = _read_ids(truth, ry0, rx0, ry1, rx1)
            _check_range(pred_ids, num_classes, nodata, predicted.path, "predicted")
            _check_range(true_ids, num_classes, ignore_index, truth.path, "true")
            pred_t = torch.from_numpy(pred_ids.astype(np.int64))
            true_t = torch.from_numpy(true_ids.astype(np.int64))
            core = (y0 - ry0, x0 - rx0, y1 - ry0, x1 - rx0)
            inner = (slice(core[0], core[2]), slice(core[1], core[3]))
            if nodata is not None:  # not segmented: scored as ignored truth, counted apart
                blank = pred_t == nodata
                scores.unsegmented += int((blank & (true_t != ignore_index))[inner].sum())
                true_t = torch.where(blank, torch.tensor(ignore_index, dtype=true_t.dtype), true_t)
            scores.matrix += confusion(pred_t[inner], true_t[inner], num_classes, ignore_index).numpy()
            scores.boundary += boundary_counts(pred_t, true_t, num_classes, ignore_index, tolerance, core)
            if advance is not None:
                advance((y1 - y0) * (x1 - x0))
    return scores


def prediction_nodata(source: ImageSource) -> int | None:
    """The no-data label value of a prediction: `segment`'s record in an OME-Zarr label image, else a
    GeoTIFF's GDAL_NODATA; None when it declares none."""
    recorded = _magnet_record(source.path).get("nodata")
    if recorded is not None:
        return int(recorded)
    return int(source.nodata) if source.nodata is not None and float(source.nodata).is_integer() else None


def _magnet_record(path: Path) -> dict:
    """The `magnet` attributes of an OME-Zarr label image segment wrote ({} for anything else)."""
    if not _is_zarr(path):
        return {}
    import zarr

    try:
        return dict(dict(zarr.open_group(path, mode="r").attrs).get("magnet") or {})
    except Exception:  # not a group, or unreadable: no record
        return {}


def mask_name(path: Path) -> str:
    """A mask's name for matching predictions to truth: the file name without mask suffixes
    (`a.ome.zarr`, `a.zarr`, `a.tif` and `a.png` are all `a`)."""
    name = path.name
    while True:
        stem, dot, suffix = name.rpartition(".")
        if not dot or not stem or f".{suffix.lower()}" not in MASK_SUFFIXES:
            return name
        name = stem


def _masks_in(folder: Path) -> list[Path]:
    if (folder / "masks").is_dir() and not (folder / "zarr.json").exists():
        folder = folder / "masks"  # a dataset folder: its masks
    return list_images(folder)


def pair_masks(predicted: Sequence[str | Path], truth: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(prediction, truth) pairs. Truth given as files pairs with the predictions in order; truth given as
    one folder (or dataset folder) pairs with each prediction by mask name. A prediction folder stands
    for the masks in it."""
    if any(not str(p).strip() for p in [*predicted, *truth]):
        raise UsageError("empty mask path")
    if not predicted or not truth:
        raise UsageError("give predicted masks and --truth masks")
    pred_paths, true_paths = [Path(p) for p in predicted], [Path(t) for t in truth]
    for path in pred_paths + true_paths:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    expanded: list[Path] = []
    for path in pred_paths:
        if _is_folder(path):
            found = _masks_in(path)
            if not found:
                raise InputError(f"{path}: no masks (Zarr, TIFF or PNG) in the folder")
            expanded.extend(found)
        else:
            expanded.append(path)
    if len(true_paths) == 1 and _is_folder(true_paths[0]):
        by_name = {mask_name(t): t for t in _masks_in(true_paths[0])}
        missing = [p for p in expanded if mask_name(p) not in by_name]
        if missing:
            raise InputError(f"{missing[0]}: no truth mask named {mask_name(missing[0])!r} in {true_paths[0]}")
        return [(p, by_name[mask_name(p)]) for p in expanded]
    if any(_is_folder(t) for t in true_paths):
        raise UsageError("--truth takes one folder, or one mask file per prediction")
    if len(expanded) != len(true_paths):
        raise UsageError(f"{len(expanded)} prediction(s) but {len(true_paths)} truth mask(s); give one truth per prediction")
    return list(zip(expanded, true_paths))


def _is_folder(path: Path) -> bool:
    """A folder of masks, not a Zarr mask (which is a folder too)."""
    return path.is_dir() and not _is_zarr(path)


def _is_zarr(path: Path) -> bool:
    from magnet_cli.io.zarr_source import is_zarr_dir

    return is_zarr_dir(path)


def label_classes(path: Path) -> list[ClassInfo] | None:
    """Class names and colours of an OME-Zarr label image's `image-label` metadata, if it has them."""
    if not _is_zarr(path):
        return None
    import zarr

    try:
        attributes = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # not a group, or unreadable: no metadata to use
        return None
    label = (attributes.get("ome") or attributes).get("image-label") or {}
    nodata = _magnet_record(path).get("nodata")  # the no-data label is no class
    properties = {p.get("label-value"): p.get("class") for p in label.get("properties", []) if p.get("label-value") != nodata}
    colors = {c.get("label-value"): c.get("rgba", [0, 0, 0])[:3] for c in label.get("colors", [])}
    if not properties or sorted(properties) != list(range(len(properties))):
        return None
    records = [{"name": properties[i], "color": colors.get(i, [0, 0, 0])} for i in range(len(properties))]
    return classes_from_records(records)


def resolve_classes(classes: str | list[ClassInfo] | None, model: str | Path | None, pairs: list[tuple[Path, Path]], ignore_index: int) -> list[ClassInfo]:
    """--classes, else the bundle's (--model), else the prediction's label metadata, else the largest id
    found in the masks plus one (a scan of every mask)."""
    if classes is not None and model is not None:
        raise UsageError("give --classes or --model, not both")
    if isinstance(classes, list):
        return classes
    if classes is not None:
        return parse_classes(classes)
    if model is not None:  # model.toml only: reading classes loads no weights and runs no model code
        from magnet_cli.models.bundle import BundleSpec

        return list(BundleSpec.read(model).classes)
    for predicted, _ in pairs:
        found = label_classes(predicted)
        if found is not None:
            return found
    largest = 0
    for predicted, truth in pairs:
        for path, skip in ((predicted, None), (truth, ignore_index)):
            with open_image(path) as source:
                skip = prediction_nodata(source) if skip is None else skip
                for y0, x0, y1, x1 in tiles(source.height, source.width, TILE):
                    ids = _read_ids(source, y0, x0, y1, x1)
                    if skip is not None:
                        ids = ids[ids != skip]
                    if ids.size:
                        largest = max(largest, int(ids.max()))
    return default_classes(max(2, largest + 1))


@dataclass
class EvaluationResult:
    """Scores of every pair and of all of them together."""

    total: Scores
    per_image: list[tuple[Path, Path, Scores]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            **self.total.to_dict(),
            "images": [
                {"prediction": str(p), "truth": str(t), **{k: v for k, v in s.to_dict().items() if k != "per_class"}}
                for p, t, s in self.per_image
            ],
        }


def evaluate(
    predicted: Sequence[str | Path],
    truth: Sequence[str | Path],
    *,
    classes: str | list[ClassInfo] | None = None,
    model: str | Path | None = None,
    ignore_index: int = IGNORE_INDEX,
    boundary_tolerance: int = DEFAULT_TOLERANCE,
    run: RunSettings | None = None,
) -> EvaluationResult:
    """Per-class IoU, mIoU, pixel accuracy, frequency-weighted IoU and boundary F of predicted masks
    against truth masks (files in order, or two folders matched by name), streamed tile by tile."""
    from magnet_cli.progress import counting_bar
    from magnet_cli.settings import MAX_IGNORE_INDEX, RunSettings, check_whole_number

    run = run or RunSettings()
    check_whole_number(ignore_index, "--ignore-index", 0, MAX_IGNORE_INDEX)
    tolerance = check_whole_number(boundary_tolerance, "--boundary-tolerance", 0, MAX_BOUNDARY_TOLERANCE)
    pairs = pair_masks(predicted, truth)
    class_list = resolve_classes(classes, model, pairs, ignore_index)
    result = EvaluationResult(Scores.empty(class_list, tolerance))
    total_pixels = 0
    for pred, _ in pairs:
        with open_image(pred) as source:
            total_pixels += source.height * source.width
    with counting_bar(run.progress, "evaluate (pixels)", total_pixels) as advance:
        for pred, true in pairs:
            scores = evaluate_pair(pred, true, class_list, ignore_index=ignore_index, tolerance=tolerance, advance=advance)
            result.per_image.append((pred, true, scores))
            result.total.add(scores)
    return result
