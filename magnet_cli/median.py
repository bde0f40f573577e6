"""The median filter of MagNet's score map Q = median_blur(u(Y) * c(R)) (paper section 3.2).

Exact (the middle value of each zero-padded kernel x kernel neighbourhood), since the k points of highest
score are chosen from it. On CPU it is one of the largest costs of a run after the two networks, so it
runs as a selection network that shares work between neighbouring pixels (`_plan`); on a GPU, and for
large kernels, as the median of unfolded neighbourhoods.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def median_blur(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Median filter of an odd square kernel with zero padding, per channel (as the reference does).

    With kernel*kernel odd the median is the middle value, so this equals any exact median filter. Any
    real dtype; on CPU 16-bit integers run ~2.7x faster than float32 (half the bytes per comparison).
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"median kernel must be odd and positive, got {kernel}")
    if kernel == 1:
        return x
    if x.device.type == "cpu" and kernel <= MAX_NETWORK_KERNEL:
        return _median_by_network(x, kernel)
    return _median_by_unfold(x, kernel)


MAX_NETWORK_KERNEL = 9

# Elements of unfolded neighbourhoods a GPU median takes at once (256 MB of float32).
UNFOLD_ELEMENTS = 1 << 26


def _median_by_unfold(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """The median of each neighbourhood by `median` over unfolded planes. On a GPU as many planes a call
    as fit UNFOLD_ELEMENTS: a few large kernels, which it runs well (a selection network is hundreds of
    tiny ones, launch-bound there). On CPU one plane at a time: the unfolded neighbourhoods take kernel^2
    times the plane's memory."""
    n, c, h, w = x.shape
    # unfold takes floating point only; integer values below 2^24 are exact in float32.
    planes = x.reshape(n * c, 1, h, w) if x.is_floating_point() else x.reshape(n * c, 1, h, w).float()
    out = torch.empty_like(planes)
    step = 1 if x.device.type == "cpu" else max(1, UNFOLD_ELEMENTS // (kernel * kernel * h * w))
    for i in range(0, n * c, step):
        patches = F.unfold(planes[i : i + step], kernel_size=kernel, padding=kernel // 2)  # (p, k*k, H*W)
        out[i : i + step] = patches.median(dim=1).values.reshape(-1, 1, h, w)
    return out.reshape(n, c, h, w).to(x.dtype)


def _median_by_network(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """On CPU, in NumPy: its elementwise ops are single-threaded, while hundreds of small OpenMP-parallel
    torch ops stall whenever another thread holds a core (measured with the other core busy: 17 ms per
    window in NumPy, 450+ ms in torch; torch on an idle machine: ~4 ms)."""
    array = x.detach().numpy()
    pad = kernel // 2
    planes = array.reshape(-1, *array.shape[-2:])
    out = np.empty_like(planes)
    # One plane at a time: a 256 px plane's ~80 intermediate arrays stay in the core's cache, where a
    # batch of 4 spills (one plane at a time: 5.9 ms per 4 planes of uint16, all at once: 9.0 ms).
    for index, plane in enumerate(planes):
        out[index] = _run_plan(np.pad(plane, pad), kernel)
    return torch.from_numpy(out.reshape(array.shape))


# --- the selection network ---------------------------------------------------------------------------
# A comparator (i, j, keep_low, keep_high) puts min(wire i, wire j) on wire i and the max on wire j,
# computing only the outputs a later step reads.
Comparator = tuple[int, int, bool, bool]


class Plan(NamedTuple):
    """The median of each kernel x kernel neighbourhood in three steps over whole planes:
    1. sort each column of `kernel` pixels (a plane per rank, one pixel wider than needed on each side);
    2. merge each sorted column with its right neighbour (shared: output x uses the pairs starting at x,
       x + 2, ...; the pair at x + 2 is output x + 2's first pair too);
    3. select the middle value from those sorted pairs (and the last column when the kernel is odd).
    Each step's comparators are pruned to what the median depends on: about 2/3 of the comparisons of
    one network over all kernel^2 pixels of a neighbourhood (78 instead of 114 for 5 x 5)."""

    column_sort: tuple[Comparator, ...]  # wires: the column's pixel at row offset r, in any order
    column_ranks: tuple[int, ...]  # the wire holding each rank of a sorted column (-1: never read)
    pair_merge: tuple[Comparator, ...]  # wires 0..k-1: the left column's ranks, k..2k-1: the right one's
    pair_ranks: tuple[int, ...]  # the wire holding each rank of a merged pair (-1: never read)
    final: tuple[Comparator, ...]  # wires: each pair's ranks in turn (2k each), then the last column's
    median_wire: int


def _run_plan(padded: np.ndarray, kernel: int) -> np.ndarray:
    """The median filter of a zero-padded array (its last two axes padded by kernel // 2)."""
    plan = _plan(kernel)
    k = kernel
    rows, stride = padded.shape[-2], padded.shape[-1]
    h, w = rows - k + 1, stride - k + 1
    # Each plane flattened, a neighbour at (dy, dx) is the flat offset dy * stride + dx: every shifted
    # view is one contiguous run, which NumPy runs ~2x faster than a 2-D view's rows. Values computed
    # between the rows (x >= w) are never read.
    flat = np.ascontiguousarray(padded).reshape(*padded.shape[:-2], rows * stride)
    span = h * stride  # the columns below each output row, whole rows
    columns = _ranked(_run([flat[..., r * stride : r * stride + span] for r in range(k)], plan.column_sort), plan.column_ranks)
    left = [None if rank is None else rank[..., : span - 1] for rank in columns]
    right = [None if rank is None else rank[..., 1:span] for rank in columns]
    pairs = _ranked(_run(left + right, plan.pair_merge), plan.pair_ranks)
    last = span - (k - 1)  # (h - 1) * stride + w: up to the last output pixel
    wires: list = []
    for start in range(0, k - 1, 2):
        wires += [None if rank is None else rank[..., start : start + last] for rank in pairs]
    if k % 2:
        wires += [None if rank is None else rank[..., k - 1 : k - 1 + last] for rank in columns]
    median = _run(wires, plan.final)[plan.median_wire]
    median = np.pad(median, [(0, 0)] * (median.ndim - 1) + [(0, k - 1)])  # whole rows again
    return median.reshape(*padded.shape[:-2], h, stride)[..., :w]


def _ranked(wires: list, ranks: tuple[int, ...]) -> list:
    return [wires[wire] if wire >= 0 else None for wire in ranks]


def _run(wires: list, comparators: tuple[Comparator, ...]) -> list:
    wires = list(wires)
    for i, j, keep_low, keep_high in comparators:
        a, b = wires[i], wires[j]
        wires[i] = np.minimum(a, b) if keep_low else None
        wires[j] = np.maximum(a, b) if keep_high else None
    return wires


@functools.cache
def _plan(kernel: int) -> Plan:
    k = kernel
    final_ops: list[tuple[int, int]] = []
    lists = [list(range(2 * k * p, 2 * k * (p + 1))) for p in range(k // 2)]
    if k % 2:
        lists.append(list(range(2 * k * (k // 2), 2 * k * (k // 2) + k)))
    median_wire = _merge_all(lists, final_ops)[k * k // 2]
    final, final_inputs = _prune(final_ops, {median_wire})

    needed_pair_ranks = {wire % (2 * k) for wire in final_inputs if wire < 2 * k * (k // 2)}
    merge_ops: list[tuple[int, int]] = []
    pair_ranks = _merge(list(range(k)), list(range(k, 2 * k)), merge_ops)
    pair_merge, merge_inputs = _prune(merge_ops, {pair_ranks[r] for r in needed_pair_ranks})

    needed_column_ranks = {wire % k for wire in merge_inputs}
    needed_column_ranks |= {wire - 2 * k * (k // 2) for wire in final_inputs if wire >= 2 * k * (k // 2)}
    sort_ops: list[tuple[int, int]] = []
    column_ranks = _sort(list(range(k)), sort_ops)
    column_sort, _ = _prune(sort_ops, {column_ranks[r] for r in needed_column_ranks})
    return Plan(column_sort, _only(column_ranks, needed_column_ranks), pair_merge, _only(pair_ranks, needed_pair_ranks),
                final, median_wire)


def _only(ranks: list[int], needed: set[int]) -> tuple[int, ...]:
    return tuple(wire if rank in needed else -1 for rank, wire in enumerate(ranks))


def _prune(ops: list[tuple[int, int]], outputs: set[int]) -> tuple[tuple[Comparator, ...], set[int]]:
    """The comparators `outputs` depend on, each computing only the outputs read later; and the input
    wires read."""
    needed, kept = set(outputs), []
    for i, j in reversed(ops):
        keep_low, keep_high = i in needed, j in needed
        if keep_low or keep_high:
            needed |= {i, j}
            kept.append((i, j, keep_low, keep_high))
    return tuple(reversed(kept)), needed


def _merge(a: list[int], b: list[int], ops: list[tuple[int, int]]) -> list[int]:
    """Batcher's odd-even merge of two sorted wire lists of any lengths: appends its comparators (min to
    the first wire) and returns the wires in rank order."""
    if not a or not b:
        return list(a or b)
    if len(a) == 1 and len(b) == 1:
        ops.append((a[0], b[0]))
        return [a[0], b[0]]
    evens = _merge(a[0::2], b[0::2], ops)
    odds = _merge(a[1::2], b[1::2], ops)
    # Evens hold as many of the smallest values as odds, or one or two more: one compare-exchange of each
    # odd with the next even puts the interleaving in order (the 0-1 principle).
    ordered = [evens[0]]
    for i, odd in enumerate(odds):
        if i + 1 < len(evens):
            ops.append((odd, evens[i + 1]))
            ordered += [odd, evens[i + 1]]
        else:
            ordered.append(odd)
    return ordered + evens[len(odds) + 1 :]


def _sort(wires: list[int], ops: list[tuple[int, int]]) -> list[int]:
    if len(wires) <= 1:
        return list(wires)
    half = len(wires) // 2
    return _merge(_sort(wires[:half], ops), _sort(wires[half:], ops), ops)


def _merge_all(lists: list[list[int]], ops: list[tuple[int, int]]) -> list[int]:
    """Merge sorted wire lists pairwise, level by level, into one rank order."""
    while len(lists) > 1:
        merged = [_merge(lists[i], lists[i + 1], ops) for i in range(0, len(lists) - 1, 2)]
        lists = merged + ([lists[-1]] if len(lists) % 2 else [])
    return lists[0]
