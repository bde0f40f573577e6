"""Process-level tuning for CPU inference."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def keep_freed_memory_in_heap() -> bool:
    """Stop glibc from returning every large tensor's memory to the OS when it is freed.

    Convolution activations are tens of MB; by default glibc maps and unmaps each one, and the page
    faults of re-touching fresh pages cost as much as the arithmetic (measured: the refiner ran 2.2x
    faster per window with this, system time fell from ~50% to ~2%). Our working set is bounded, so
    keeping the freed pages costs at most that bound. Returns whether the tuning applied (glibc only).
    """
    global _tuned
    if _tuned or not sys.platform.startswith("linux"):
        return _tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        _tuned = False
    return _tuned


def one_intra_op_thread() -> None:
    """Make torch ops on the calling thread single-threaded (the setting is per thread with OpenMP).

    For helper threads (readers, the writer): their small resizes and argmaxes gain nothing from a
    second core, and an OpenMP team of two started beside the main thread's convolutions stalls both.
    """
    import torch

    torch.set_num_threads(1)
