"""The MagNet refinement step as pure tensor functions (paper section 3.2, DESIGN section 2).

Maps are probabilities shaped (N, C, H, W). Y is the coarse cumulative map, R the refiner's proposal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from magnet_cli.devices import host
from magnet_cli.median import median_blur


def certainty(probabilities: torch.Tensor) -> torch.Tensor:
    """top1 - top2 over the class axis, shaped (N, 1, H, W). Zero where the map is all zeros."""
    classes = probabilities.shape[1]
    if not 2 <= classes <= MAX_RUNNING_TOP2_CLASSES:
        top2 = torch.topk(probabilities, k=2, dim=1).values
        return (top2[:, 0] - top2[:, 1]).unsqueeze(1)
    # A running (best, second) pair over the class planes: the same two values as topk (ties included),
    # about 7x faster than topk over a short class axis on CPU.
    first, second = probabilities[:, 0], probabilities[:, 1]
    first, second = torch.maximum(first, second), torch.minimum(first, second)
    for c in range(2, classes):
        plane = probabilities[:, c]
        second = torch.maximum(second, torch.minimum(first, plane))
        first = torch.maximum(first, plane)
    return (first - second).unsqueeze(1)


MAX_RUNNING_TOP2_CLASSES = 32


def uncertainty(probabilities: torch.Tensor) -> torch.Tensor:
    """1 - certainty: 1 where the two best classes tie, 0 where one class has all the mass."""
    return 1.0 - certainty(probabilities)


# Q is kept to this many steps of [0, 1] (16 bits). The median filter only selects values, so it commutes
# with the rounding, and on CPU its selection network runs ~2.7x faster on 16-bit integers than on float32
# (it was the largest cost of a run after the two networks). Points whose exact scores differ by less
# than a step tie, and ties go to the lower flat index (top_mask), as exact ties always did.
SCORE_STEPS = 65535


def score_map(
    coarse: torch.Tensor, refined: torch.Tensor, smooth_kernel: int, blur_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Q = median_blur(u(Y) * c(R)), to 1/SCORE_STEPS: high where the coarse map is unsure and the
    refined one is sure.

    Like the reference, the product is resized (nearest) to `blur_size` (the model input size), blurred
    there and resized back (nearest); None blurs at the map's own size.
    """
    steps = (uncertainty(coarse) * certainty(refined)).mul_(SCORE_STEPS).round_().clamp_(0, SCORE_STEPS)
    size = steps.shape[-2:]
    if blur_size is None or tuple(blur_size) == tuple(size):
        blurred = _median_of_steps(steps, smooth_kernel)
    else:
        small = F.interpolate(steps, size=blur_size, mode="nearest")
        blurred = F.interpolate(_median_of_steps(small, smooth_kernel), size=size, mode="nearest")
    return blurred.mul_(1.0 / SCORE_STEPS)


def _median_of_steps(steps: torch.Tensor, kernel: int) -> torch.Tensor:
    """The median filter of float32 whole numbers in [0, SCORE_STEPS]; on CPU in 16-bit integers."""
    if steps.device.type != "cpu":
        return median_blur(steps, kernel)
    return median_blur(steps.to(torch.uint16), kernel).float()


def points_for_level(points: float, level_pixels: int, selected_windows: int = 1, total_windows: int = 1) -> int:
    """How many points one level replaces: a count (> 1) or a fraction (<= 1) of the level's pixels,
    scaled by the fraction of windows refined, always an integer within [0, level_pixels]."""
    share = selected_windows / total_windows
    if points > 1:
        k = min(int(points), int(level_pixels * share))
    else:
        k = int(level_pixels * points * share)
    return max(0, min(k, level_pixels))


def window_points(points: float, level_pixels: int, window_pixels: int) -> int:
    """How many points one streaming window replaces: its share (window_pixels / level_pixels) of the
    level's k, rounded, clipped to the window. Not the level's whole k: each window would then refine
    everything and MagNet would stop selecting (DESIGN section 2, streaming variant)."""
    k_level = points_for_level(points, level_pixels)
    return max(0, min(window_pixels, round(k_level * window_pixels / level_pixels)))


def most_uncertain_windows(
    coarse: torch.Tensor, regions: Sequence[tuple[int, int, int, int]], count: int
) -> list[int]:
    """MagNet-Fast's choice: indices (ascending) of the `count` regions (y0, x0, y1, x1) of the (1, C, H, W)
    map Y with the HIGHEST mean uncertainty, ties going to the lower index. The paper's rule; the reference
    code sorts ascending and so refines the most certain windows (DESIGN section 2), which we do not copy."""
    u = uncertainty(coarse)[0, 0]
    # The means stay on the device and cross to the host together: one wait, not one per window.
    means = host(torch.stack([u[y0:y1, x0:x1].mean() for y0, x0, y1, x1 in regions])).tolist() if regions else []
    order = sorted(range(len(means)), key=lambda i: (-means[i], i))
    return sorted(order[: max(0, count)])


def top_points(score: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices (N, k) of the k highest scores of each map in (N, 1, H, W).

    Ties are broken by the lower flat index so that results are deterministic on every device.
    """
    n = score.shape[0]
    flat = score.reshape(n, -1)
    k = min(k, flat.shape[1])
    if k <= 0:
        return torch.empty(n, 0, dtype=torch.long, device=score.device)
    if k == flat.shape[1]:
        return torch.arange(k, device=score.device).expand(n, k)
    # A stable descending sort gives the documented tie-break; topk's order among ties is unspecified.
    return torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]


def replace_points(coarse: torch.Tensor, refined: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Y with R's class probabilities at the given flat indices (a new tensor)."""
    n, c, h, w = coarse.shape
    gather = indices.unsqueeze(1).expand(n, c, indices.shape[1])
    out = coarse.reshape(n, c, h * w).clone()
    out.scatter_(2, gather, refined.reshape(n, c, h * w).gather(2, gather))
    return out.reshape(n, c, h, w)


def top_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """(N, 1, H, W) bool, True at exactly the points `top_points` picks (the k highest scores, ties
    going to the lower flat index), found with a k-th value search instead of a full sort (~5x faster)."""
    n = score.shape[0]
    flat = score.reshape(n, -1)
    total = flat.shape[1]
    k = min(k, total)
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k == total:
        return torch.ones_like(score, dtype=torch.bool)
    kth = kth_largest(flat, k)
    above = flat > kth
    tied = flat == kth
    room = k - above.sum(1, keepdim=True)  # how many of the tied points still fit, lowest index first
    mask = above | (tied & (torch.cumsum(tied, 1) <= room))
    return mask.reshape(score.shape)


def kth_largest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of each row of (N, M) float32, shaped (N, 1).

    On CPU `kthvalue`. A GPU runs `kthvalue` of one long row (a whole level map, --selection global) as
    one slice on one block; there a bisection on the values' bit patterns is used instead: 32 counting
    passes, each a parallel reduction over the whole row, exact (the same value kthvalue finds).
    """
    if flat.device.type == "cpu" or flat.dtype != torch.float32:
        return torch.kthvalue(flat, flat.shape[1] - k + 1, dim=1, keepdim=True).values
    return kth_largest_by_bisection(flat, k)


def kth_largest_by_bisection(flat: torch.Tensor, k: int) -> torch.Tensor:
    """`kth_largest` of float32 rows as parallel counting passes (any device; the GPU's way)."""
    # float32 -> int32 keys in the same order (negatives have their magnitude bits flipped).
    bits = flat.contiguous().view(torch.int32)
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    low = keys.min(dim=1, keepdim=True).values  # count(keys >= low) = M >= k: the answer is >= low
    high = keys.max(dim=1, keepdim=True).values + 1  # count(keys >= high) = 0 < k: the answer is < high
    for _ in range(33):  # the interval halves each pass; 2^33 covers the int32 key range
        middle = (low + high) // 2
        enough = (keys >= middle).sum(dim=1, keepdim=True) >= k
        low = torch.where(enough, middle, low)
        high = torch.where(enough, high, middle)
    key = low.to(torch.int32)
    return torch.where(key < 0, key ^ 0x7FFFFFFF, key).view(torch.float32)


def refine(
    coarse: torch.Tensor,
    refined: torch.Tensor,
    k: int,
    smooth_kernel: int,
    blur_size: tuple[int, int] | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """One MagNet refinement: Y takes R's probabilities at the k points of highest score Q.

    `allowed` (N, 1, H, W bool) restricts replacement to where R exists (MagNet-Fast refines only
    some windows of a level; elsewhere R is empty and must never overwrite Y).
    """
    if k <= 0:
        return coarse
    if allowed is None and k >= coarse.shape[-2] * coarse.shape[-1]:
        return refined  # every point is replaced: no score needed
    score = score_map(coarse, refined, smooth_kernel, blur_size)
    if allowed is None:
        return torch.where(top_mask(score, k), refined, coarse)
    # Scores are >= 0, so the k highest of the masked score take every allowed point before any other;
    # `& allowed` then keeps min(k, allowed points) of them without counting them on the host.
    score = torch.where(allowed, score, torch.full_like(score, -1.0))
    return torch.where(top_mask(score, k) & allowed, refined, coarse)


def crop_resize(maps: torch.Tensor | Sequence[torch.Tensor], boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample boxes of maps to `size`, bilinear with align_corners=False semantics, borders clamped.

    `maps` (N, C, H, W), or N maps (C, H, W) of one shape (a batch whose windows have different parents:
    no stacked copy of the parents is made); `boxes` (N, 4) as (y0, x0, y1, x1) in the maps' pixel units
    (host or device). Equals upsampling the whole map (F.interpolate, bilinear, align_corners=False) and
    cropping, when the box is aligned. A box's result depends on nothing but its map and box: not on the
    thread count (every process of a run, a one-thread Dask worker included, must compute the same maps;
    F.interpolate's bilinear kernel on a crop differed by an ulp between 1 and 2 threads), nor on the other
    boxes of the batch. The common box, a child window's half-size box on whole parent pixels, is a 2x
    upsampling written as element-wise multiplies and adds (each element rounded the same way on any
    thread), about twice as fast as grid_sample on CPU; any other box goes through grid_sample.
    """
    first = maps[0]
    height, width = first.shape[-2:]
    halves = _whole_pixel_halves((height, width), first.dtype, boxes, size)
    if all(halves):
        return _upsample_halves(maps, boxes, size)
    batch = maps if isinstance(maps, torch.Tensor) else torch.stack(list(maps))
    if not any(halves):
        return _grid_sample_boxes(batch, boxes, size)
    out = torch.empty(batch.shape[0], batch.shape[1], *size, dtype=batch.dtype, device=batch.device)
    for chosen, resample in ((halves, _upsample_halves), ([not h for h in halves], _grid_sample_boxes)):
        index = [i for i, take in enumerate(chosen) if take]
        out[index] = resample(batch[index], boxes[index], size)
    return out


def _grid_sample_boxes(maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    n, _, h, w = maps.shape
    out_h, out_w = size
    dtype, device = maps.dtype, maps.device
    ys = (torch.arange(out_h, device=device, dtype=torch.float64) + 0.5) / out_h
    xs = (torch.arange(out_w, device=device, dtype=torch.float64) + 0.5) / out_w
    boxes = boxes.to(device=device, dtype=torch.float64)  # coordinates go where the maps are
    # Source pixel coordinates (pixel i's centre at i + 0.5), then grid_sample's normalised [-1, 1].
    sy = boxes[:, 0:1] + ys[None] * (boxes[:, 2:3] - boxes[:, 0:1])
    sx = boxes[:, 1:2] + xs[None] * (boxes[:, 3:4] - boxes[:, 1:2])
    gy = (sy / h * 2 - 1)[:, :, None].expand(n, out_h, out_w)
    gx = (sx / w * 2 - 1)[:, None, :].expand(n, out_h, out_w)
    grid = torch.stack([gx, gy], dim=-1).to(dtype)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _whole_pixel_halves(shape: tuple[int, int], dtype: torch.dtype, boxes: torch.Tensor, size: tuple[int, int]) -> list[bool]:
    """For each box: whether it is (out_h / 2) x (out_w / 2) pixels of maps of `shape` starting on a whole
    pixel inside them (a child window in its parent's map), for an even `size` and boxes on the host."""
    out_h, out_w = size
    if out_h % 2 or out_w % 2 or boxes.device.type != "cpu" or not dtype.is_floating_point:
        return [False] * boxes.shape[0]
    h, w = shape
    return [
        y0 == int(y0) and x0 == int(x0) and y1 - y0 == out_h // 2 and x1 - x0 == out_w // 2
        and y0 >= 0 and x0 >= 0 and y1 <= h and x1 <= w
        for y0, x0, y1, x1 in boxes.tolist()
    ]


def _upsample_halves(maps: torch.Tensor | Sequence[torch.Tensor], boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """crop_resize for whole-pixel half-size boxes: a 2x bilinear upsampling of each box.

    Output pixel 2k of a box starting at map pixel y0 samples y0 + k - 1/4, pixel 2k + 1 samples
    y0 + k + 1/4: weights 1/4 and 3/4 of two neighbours, the map's edge pixel repeated outside it
    (grid_sample's border padding). Columns first, then rows into the output; each box read in place: a
    view of its map, or of its siblings' parent padded once (a quadrant's margin always leaves it).
    """
    n = len(maps)
    first = maps[0]
    channels = first.shape[0]
    out_h, out_w = size
    half_h, half_w = out_h // 2, out_w // 2
    corners = [(int(y0), int(x0)) for y0, x0, _, _ in boxes.tolist()]
    if isinstance(maps, torch.Tensor) and maps.stride(0) == 0:  # siblings: their shared parent padded once
        padded = F.pad(first[None], (1, 1, 1, 1), mode="replicate")[0]
        regions = [padded[:, y0 : y0 + half_h + 2, x0 : x0 + half_w + 2] for y0, x0 in corners]
    else:
        regions = [_with_margin(source, y0, x0, y0 + half_h, x0 + half_w) for source, (y0, x0) in zip(maps, corners)]
    out = torch.empty(n, channels, half_h, 2, out_w, dtype=first.dtype, device=first.device)
    for slot, region in zip(out, regions):
        _row_pass(*_column_pass(region), slot)
    return out.view(n, channels, out_h, out_w)


def _with_margin(source: torch.Tensor, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    """source[:, top - 1 : bottom + 1, left - 1 : right + 1]: a view inside the map, its edge pixels
    repeated where the margin leaves it."""
    height, width = source.shape[-2:]
    top, left, bottom, right = top - 1, left - 1, bottom + 1, right + 1
    region = source[:, max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    margins = (max(-left, 0), max(right - width, 0), max(-top, 0), max(bottom - height, 0))
    return F.pad(region[None], margins, mode="replicate")[0] if any(margins) else region


# Every output value is round(round(3/4 b) + 1/4 a): 1/4 a is exact, so `add(..., alpha=0.25)` (fused or
# not) rounds like a multiply then an add, and the result is the same on any thread or vector width.
def _column_pass(region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, R, K) with a one-pixel margin -> the columns upsampled (C, R, 2 (K - 2)), and 3/4 of them."""
    channels, rows, width = region.shape
    three_quarters = region * 0.75
    columns = torch.empty(channels, rows, width - 2, 2, dtype=region.dtype, device=region.device)
    torch.add(three_quarters[..., 1:-1], region[..., :-2], alpha=0.25, out=columns[..., 0])
    torch.add(three_quarters[..., 1:-1], region[..., 2:], alpha=0.25, out=columns[..., 1])
    columns = columns.view(channels, rows, 2 * (width - 2))
    return columns, columns * 0.75


def _row_pass(columns: torch.Tensor, columns_3q: torch.Tensor, out: torch.Tensor) -> None:
    """Rows of (C, R + 2, W) column-upsampled maps (and 3/4 of them) into `out` (C, R, 2, W)."""
    torch.add(columns_3q[:, 1:-1], columns[:, :-2], alpha=0.25, out=out[:, :, 0])
    torch.add(columns_3q[:, 1:-1], columns[:, 2:], alpha=0.25, out=out[:, :, 1])


def class_labels(probabilities: torch.Tensor) -> torch.Tensor:
    """Argmax over the class axis (0) of a (C, H, W) map; ties go to the lower class id.

    `max(0).indices` instead of `argmax(0)`: the same result, ~20x faster on CPU for a few classes.
    """
    return probabilities.max(0).indices


def host_class_labels(probabilities: np.ndarray) -> np.ndarray:
    """class_labels of a NaN-free (C, H, W) float array on the host, as uint8 (up to 256 classes) or uint16.

    A running maximum over the classes, the label moved by arithmetic (no masked writes, whose branches
    on random masks cost more than the comparisons): ~10x faster than torch's max(0) with indices on a
    CPU for a few classes (`benchmarks/step_costs.py`), which matters on the writer thread that labels
    every window while the models run. Strictly greater moves the label, so ties keep the lower class.
    """
    classes = probabilities.shape[0]
    labels = np.zeros(probabilities.shape[1:], np.uint8 if classes <= 256 else np.uint16)
    best = probabilities[0].copy()
    better = np.empty(best.shape, bool)
    step = np.empty_like(labels)
    for c in range(1, classes):
        np.greater(probabilities[c], best, out=better)
        np.maximum(best, probabilities[c], out=best)
        np.subtract(labels.dtype.type(c), labels, out=step)  # wraps around: labels + step is c exactly
        np.multiply(step, better, out=step)
        np.add(labels, step, out=labels)
    return labels
