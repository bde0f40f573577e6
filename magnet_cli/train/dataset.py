"""Training data: the one dataset layout (images/ + masks/ + classes.json) and samplers of MagNet windows.

A dataset folder holds `images/<stem>.<ext>` and `masks/<stem>.<ext'>` (matched by stem; masks are
single-band class ids, PNG or TIFF or Zarr), an optional `classes.json` (list of {name, color}) and
uses an ignore index (default 255) for unlabelled pixels. `synth:SEED:COUNT:SIZE` names synthetic scenes
rendered in memory instead. Images are opened lazily through `open_image`; windows are read at any
scale level of the image's MagNet plan (`make_plan`), so one segmenter learns every level.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from magnet_cli.classes import ClassInfo, default_classes, parse_classes
from magnet_cli.errors import InputError, UsageError
from magnet_cli.io.base import Box, ImageSource, PixelNormalization
from magnet_cli.io.open import list_images, open_image
from magnet_cli.io.value_range import normalization_for
from magnet_cli.models.sources import bands_channels
from magnet_cli.pyramid import ScalePlan, Window, make_plan
from magnet_cli.refine import crop_resize
from magnet_cli.settings import CoarseFrom

IGNORE_INDEX = 255
# Masks up to this many pixels are scanned for class ids when the dataset is opened; larger ones are
# checked window by window as they are read.
SCAN_PIXELS = 1 << 27
SCAN_ROWS_PIXELS = 1 << 22  # pixels per band read while scanning a mask
OPEN_CACHE = 16  # opened (image, mask) pairs kept (PNG and synth sources hold their pixels in memory)


@dataclass
class DatasetItem:
    """One image/mask pair: its name, size and how to open it."""

    name: str
    height: int
    width: int
    open_pair: Callable[[], tuple[ImageSource, ImageSource]]
    bands: int = 3  # the image's band count


@dataclass
class SegmentationDataset:
    """Image/mask pairs with their classes; sources are opened on demand and a few kept open."""

    items: list[DatasetItem]
    classes: list[ClassInfo]
    ignore_index: int = IGNORE_INDEX
    description: str = ""
    cache: int = OPEN_CACHE
    # How images become the model's [0, 1] input, as `segment` reads them: bands counted from 1 (None: the
    # default rules) and the value range asked for (auto, dtype, (min, max); None: auto), resolved per image.
    bands: tuple[int, ...] | None = None
    value_range: str | tuple[float, float] | None = None
    channels: int = 3  # the model's input channels: how many bands each read gives it
    _open: "OrderedDict[int, tuple[ImageSource, ImageSource]]" = field(default_factory=OrderedDict, repr=False)
    _normalization: dict[int, PixelNormalization] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def sources(self, index: int) -> tuple[ImageSource, ImageSource]:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        pair = self.items[index].open_pair()
        self._open[index] = pair
        if index not in self._normalization:
            self._normalization[index] = self.normalization(pair[0])
        while len(self._open) > self.cache:
            _, (image, mask) = self._open.popitem(last=False)
            image.close()
            mask.close()
        return pair

    def close(self) -> None:
        while self._open:
            _, (image, mask) = self._open.popitem()
            image.close()
            mask.close()

    def normalization(self, image: ImageSource) -> PixelNormalization:
        """How `segment` would read `image` with this dataset's bands and value range (auto resolved from the
        file, io/value_range.py)."""
        return normalization_for(image, self.bands, self.value_range, channels=self.channels)

    def data_channels(self) -> int:
        """The input channels of a model trained on this data: one per --bands entry, else one per band of
        its images (grey, grey + alpha: RGB, replicated as `segment` reads them for a 3-channel model)."""
        if self.bands is not None:
            return bands_channels(self.bands) or 3
        count = self.items[0].bands if self.items else 3
        return 3 if count in (1, 2) else count

    def read_image(self, index: int, box: Box, size: tuple[int, int]) -> torch.Tensor:
        """Float (channels, h, w) in [0, 1] of a full-resolution box, read as `segment` reads it."""
        image = self.sources(index)[0]
        return image.read(box, size[0], size[1], self._normalization[index])

    def read_mask(self, index: int, box: Box, size: tuple[int, int]) -> torch.Tensor:
        """Class ids (h, w) int64 of a full-resolution box, resampled nearest, ids checked."""
        mask_source = self.sources(index)[1]
        labels = read_mask_nearest(mask_source, box, size)
        check_ids(labels, self.num_classes, self.ignore_index, mask_source.path)
        return labels


def read_mask_nearest(source: ImageSource, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resampling of level 0 of a single-band mask; reads only the needed rows."""
    h, w = size
    ys = np.clip(np.floor(box.y0 + (np.arange(h) + 0.5) * box.height / h), 0, source.height - 1).astype(np.int64)
    xs = np.clip(np.floor(box.x0 + (np.arange(w) + 0.5) * box.width / w), 0, source.width - 1).astype(np.int64)
    x0, x1 = int(xs[0]), int(xs[-1]) + 1
    band_rows = max(1, SCAN_ROWS_PIXELS // (x1 - x0))
    pieces, i = [], 0
    while i < h:  # the needed rows in bands of at most band_rows source rows: bounded memory, few reads
        j = i
        while j + 1 < h and ys[j + 1] - ys[i] < band_rows:
            j += 1
        region = _single_band(source.read_level(0, int(ys[i]), x0, int(ys[j]) + 1, x1), source.path)
        pieces.append(region[np.ix_(ys[i : j + 1] - ys[i], xs - x0)])
        i = j + 1
    picked = np.concatenate(pieces)
    return torch.from_numpy(picked.astype(np.int64))


def _single_band(raw: np.ndarray, path: Path) -> np.ndarray:
    if raw.ndim == 3:
        if raw.shape[2] != 1:
            raise InputError(f"{path}: a mask must hold one band of class ids, found {raw.shape[2]} bands")
        raw = raw[:, :, 0]
    if raw.dtype.kind not in "iub":
        raise InputError(f"{path}: a mask must hold integer class ids, found {raw.dtype}")
    return raw


def check_ids(labels: torch.Tensor | np.ndarray, num_classes: int, ignore_index: int, path: Path | str) -> None:
    """InputError when a mask holds an id that is neither a class nor the ignore index."""
    values = torch.as_tensor(labels)
    bad = (values >= num_classes) & (values != ignore_index)
    if bool(bad.any()):
        found = sorted(set(values[bad].unique().tolist()))[:5]
        raise InputError(
            f"{path}: class id(s) {found} but only {num_classes} classes (0..{num_classes - 1}) "
            f"and ignore index {ignore_index}; add a classes.json or fix the mask"
        )


def _scan_ids(source: ImageSource) -> np.ndarray:
    """Sorted unique ids of a whole mask, read in bands of rows."""
    found: set[int] = set()
    rows = max(1, SCAN_ROWS_PIXELS // max(1, source.width))
    for y0 in range(0, source.height, rows):
        band = _single_band(source.read_level(0, y0, 0, min(source.height, y0 + rows), source.width), source.path)
        found.update(np.unique(band).tolist())
    return np.array(sorted(found), dtype=np.int64)


def load_dataset(
    data: str | Path,
    *,
    classes: list[ClassInfo] | str | None = None,
    ignore_index: int = IGNORE_INDEX,
    validate: bool = True,
    bands: tuple[int, ...] | None = None,
    value_range: str | tuple[float, float] | None = None,
) -> SegmentationDataset:
    """A dataset folder (images/, masks/, optional classes.json) or `synth:SEED:COUNT:SIZE`, its images read
    with `bands` (counted from 1) and `value_range` as `segment` reads them.

    Every pair is opened once to check sizes and (for masks up to SCAN_PIXELS) class ids; without a
    classes.json the class count is the largest id found plus one.
    """
    if isinstance(data, SegmentationDataset):  # already loaded, with its own reading
        return data
    dataset = _load_dataset(data, classes, ignore_index, validate)
    dataset.bands, dataset.value_range = bands, value_range
    return dataset


def _load_dataset(
    data: str | Path, classes: list[ClassInfo] | str | None, ignore_index: int, validate: bool
) -> SegmentationDataset:
    if isinstance(data, str) and data.startswith("synth:"):
        return synth_dataset(data)
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such dataset folder (expected images/ and masks/ inside)")
    images_dir, masks_dir = folder / "images", folder / "masks"
    for sub in (images_dir, masks_dir):
        if not sub.is_dir():
            raise InputError(f"{folder}: not a dataset folder (no {sub.name}/ inside)")
    images = list_images(images_dir)
    if not images:
        raise InputError(f"{images_dir}: no images (PNG, TIFF, JPEG or Zarr) in the dataset")
    masks: dict[str, Path] = {}
    for mask in list_images(masks_dir):
        stem = _stem(mask)
        if stem in masks:
            raise InputError(f"{masks_dir}: two masks named {stem!r} ({masks[stem].name}, {mask.name})")
        masks[stem] = mask
    missing = [image.name for image in images if _stem(image) not in masks]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{masks_dir}: no mask for image(s) {shown} (masks are matched by file stem)")

    if isinstance(classes, str):
        classes = parse_classes(classes)
    if classes is None and (folder / "classes.json").is_file():
        classes = parse_classes(str(folder / "classes.json"))

    items: list[DatasetItem] = []
    seen_ids: set[int] = set()
    for image_path in images:
        mask_path = masks[_stem(image_path)]
        with open_image(image_path) as image, open_image(mask_path) as mask:
            if (image.height, image.width) != (mask.height, mask.width):
                raise InputError(
                    f"{mask_path}: mask is {mask.height} x {mask.width} but image {image_path.name} is "
                    f"{image.height} x {image.width}"
                )
            if mask.bands != 1:
                raise InputError(f"{mask_path}: a mask must hold one band of class ids, found {mask.bands} bands")
            if validate and mask.height * mask.width <= SCAN_PIXELS:
                ids = _scan_ids(mask)
                if classes is not None:
                    check_ids(ids, len(classes), ignore_index, mask_path)
                seen_ids.update(int(i) for i in ids if i != ignore_index)
            items.append(
                DatasetItem(
                    _stem(image_path),
                    image.height,
                    image.width,
                    lambda i=image_path, m=mask_path: (open_image(i), open_image(m)),
                    image.bands,
                )
            )
    if classes is None:
        if not seen_ids:
            raise UsageError(f"{folder}: no classes.json and no class ids found in the masks; give --classes")
        classes = default_classes(max(2, max(seen_ids) + 1))
    return SegmentationDataset(items, list(classes), ignore_index, description=str(folder))


def _stem(path: Path) -> str:
    return path.stem


def parse_synth_spec(spec: str) -> tuple[int, int, int]:
    """`synth:SEED:COUNT:SIZE` -> (seed, count, size)."""
    parts = spec.split(":")
    try:
        if len(parts) != 4:
            raise ValueError
        seed, count, size = (int(p) for p in parts[1:])
    except ValueError:
        raise UsageError(f"{spec}: expected synth:SEED:COUNT:SIZE, e.g. synth:0:4:1024") from None
    if count < 1 or size < 1:
        raise UsageError(f"{spec}: COUNT and SIZE must be positive")
    return seed, count, size


def synth_dataset(spec: str) -> SegmentationDataset:
    """Synthetic scenes (seeds SEED..SEED+COUNT-1, SIZE x SIZE) rendered in memory when first read."""
    from magnet_cli.io.array import ArraySource
    from magnet_cli.synthetic import SYNTH_CLASSES, SceneSpec, reduce_into, image_levels, render_region, scene_name

    seed, count, size = parse_synth_spec(spec)

    def opener(scene_seed: int, name: str) -> Callable[[], tuple[ImageSource, ImageSource]]:
        def open_pair() -> tuple[ImageSource, ImageSource]:
            image, mask = render_region(SceneSpec(scene_seed, size, size), 0, 0, size, size)
            # A stored pyramid, as a written scene has: coarse windows then read a few pixels, not 16M.
            levels = [np.empty((h, w, 3), np.uint8) for h, w in image_levels(size, size)[1:]]
            reduce_into(levels, image, 0, 0)
            return (
                ArraySource(image, name=f"{name}.image", pyramid=levels),
                ArraySource(mask, name=f"{name}.mask"),
            )

        return open_pair

    items = [
        DatasetItem(scene_name(seed, i), size, size, opener(seed + i, scene_name(seed, i))) for i in range(count)
    ]
    # Rendering is the expensive part: keep every scene once rendered.
    return SegmentationDataset(items, list(SYNTH_CLASSES), IGNORE_INDEX, description=spec, cache=count)


# --- sampling ---------------------------------------------------------------------------------------
def window_box(window: Window) -> Box:
    return Box(window.y0, window.x0, window.y1, window.x1)


def augment(arrays: list[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random horizontal/vertical flip and 90-degree rotation of every (..., H, W) tensor.

    Rotations by 90 or 270 degrees need square windows; for others only 0 and 180 are drawn.
    """
    flip_h, flip_v = bool(rng.integers(2)), bool(rng.integers(2))
    square = arrays[0].shape[-1] == arrays[0].shape[-2]
    turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    out = []
    for a in arrays:
        if flip_h:
            a = a.flip(-1)
        if flip_v:
            a = a.flip(-2)
        if turns:
            a = torch.rot90(a, turns, dims=(-2, -1))
        out.append(a.contiguous())
    return out


@dataclass
class WindowSampler:
    """Random (image, mask) windows from every scale level of each image's MagNet plan.

    Draws an image uniformly, a level uniformly among its plan's levels, then a window of that level
    uniformly. Deterministic given the numpy Generator passed in; holds no random state itself.
    """

    dataset: SegmentationDataset
    input_size: tuple[int, int]
    augment: bool = True
    _plans: dict[int, ScalePlan] = field(default_factory=dict, repr=False)

    def plan(self, index: int) -> ScalePlan:
        if index not in self._plans:
            item = self.dataset.items[index]
            self._plans[index] = make_plan(item.height, item.width, self.input_size)
        return self._plans[index]

    def draw_window(self, rng: np.random.Generator, min_level: int = 0) -> tuple[int, Window]:
        index = int(rng.integers(len(self.dataset)))
        plan = self.plan(index)
        level = int(rng.integers(min(min_level, plan.depth - 1), plan.depth))
        spec = plan.levels[level]
        row, col = int(rng.integers(len(spec.rows.starts))), int(rng.integers(len(spec.cols.starts)))
        return index, plan.window(level, row, col)

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One window: image (channels, h, w) float in [0, 1] and mask (h, w) int64."""
        index, window = self.draw_window(rng)
        box = window_box(window)
        image = self.dataset.read_image(index, box, self.input_size)
        mask = self.dataset.read_mask(index, box, self.input_size)
        if self.augment:
            image, mask = augment([image, mask], rng)
        return image, mask

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` windows stacked: images (B, channels, h, w), masks (B, h, w)."""
        pairs = [self.sample(rng) for _ in range(size)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


COARSE_SOURCES = tuple(c.value for c in CoarseFrom)


@dataclass
class RefinerPairSampler:
    """Refiner training pairs (DESIGN section 2, paper section 3.3): the coarse map Y cropped to a window
    of a random level s >= 2 and resized to h x w, the fine map O (segmenter softmax on that window) and
    the window's mask.

    `coarse_from` says where Y comes from: "parent" (default) is the segmenter's map of the window's
    parent at level s - 1, so pairs come from random adjacent levels, the scale gap the refiner meets
    at every step of inference; "whole" is the map of the whole image (level 1), as the reference
    train.py does, which trains mostly on the large gaps of the deepest levels.
    The segmenter is frozen; `segment` maps images (N, channels, h, w) to probabilities (N, C, h, w) without
    gradients. Whole-image maps are cached per image.
    """

    dataset: SegmentationDataset
    input_size: tuple[int, int]
    segment: Callable[[torch.Tensor], torch.Tensor]
    augment: bool = True
    coarse_from: str = "parent"
    crop: int | None = None  # train on random crop x crop squares of each pair
    _windows: WindowSampler | None = field(default=None, repr=False)
    _coarse: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.coarse_from = str(getattr(self.coarse_from, "value", self.coarse_from))
        if self.coarse_from not in COARSE_SOURCES:
            raise UsageError(f"--coarse-from {self.coarse_from!r}: expected one of {', '.join(COARSE_SOURCES)}")
        if self.crop is not None and not 1 <= self.crop <= min(self.input_size):
            raise UsageError(f"--crop {self.crop}: must be between 1 and the model input size {self.input_size}")
        self._windows = WindowSampler(self.dataset, self.input_size, augment=False)

    def coarse_map(self, index: int) -> torch.Tensor:
        """Segmenter probabilities (C, h, w) of the whole image read at model input size."""
        if index not in self._coarse:
            item = self.dataset.items[index]
            whole = self.dataset.read_image(index, Box(0, 0, item.height, item.width), self.input_size)
            self._coarse[index] = self.segment(whole[None])[0]
        return self._coarse[index]

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`size` pairs stacked: coarse Y (B, C, h, w), fine O (B, C, h, w), labels (B, h, w)."""
        sampler = self._windows
        assert sampler is not None
        draws = [sampler.draw_window(rng, min_level=1) for _ in range(size)]
        images, labels, coarse_boxes, parent_images = [], [], [], []
        for index, window in draws:
            box = window_box(window)
            images.append(self.dataset.read_image(index, box, self.input_size))
            labels.append(self.dataset.read_mask(index, box, self.input_size))
            if self.coarse_from == "parent":
                parent = sampler.plan(index).parent(window)
                assert parent is not None  # min_level=1: never a root
                parent_images.append(self.dataset.read_image(index, window_box(parent), self.input_size))
                coarse_boxes.append(window_box(parent))
            else:
                item = self.dataset.items[index]
                coarse_boxes.append(Box(0, 0, item.height, item.width))
        maps = self.segment(torch.stack(images + parent_images))
        fine = maps[:size]
        if self.coarse_from == "parent":
            coarse_maps = list(maps[size:])
        else:
            coarse_maps = [self.coarse_map(index) for index, _ in draws]
        out_y, out_o, out_l = [], [], []
        for (index, window), area, coarse_map, o, label in zip(draws, coarse_boxes, coarse_maps, fine, labels):
            y = crop_resize(coarse_map[None], _box_in(window_box(window), area, self.input_size)[None], self.input_size)[0]
            if self.augment:
                y, o, label = augment([y, o, label], rng)
            if self.crop is not None:
                y, o, label = random_crop([y, o, label], self.crop, rng)
            out_y.append(y)
            out_o.append(o)
            out_l.append(label)
        return torch.stack(out_y), torch.stack(out_o), torch.stack(out_l)


def random_crop(arrays: list[torch.Tensor], size: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random size x size square of every (..., H, W) tensor."""
    height, width = arrays[0].shape[-2:]
    y0, x0 = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
    return [a[..., y0 : y0 + size, x0 : x0 + size].contiguous() for a in arrays]


def _box_in(box: Box, area: Box, size: tuple[int, int]) -> torch.Tensor:
    """`box` in the pixel coordinates of a map of `area` read at `size`: (y0, x0, y1, x1) float64."""
    h, w = size
    sy, sx = h / area.height, w / area.width
    return torch.tensor(
        [(box.y0 - area.y0) * sy, (box.x0 - area.x0) * sx, (box.y1 - area.y0) * sy, (box.x1 - area.x0) * sx],
        dtype=torch.float64,
    )


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    """The sampling generator of one epoch: a pure function of (seed, epoch), so resuming from an epoch
    boundary draws exactly the windows an uninterrupted run would have drawn."""
    return np.random.default_rng([seed, epoch, stream])

