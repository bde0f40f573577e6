"""Everything that depends on the device, in one place: which device, which precision, how much memory
it has free, how tensors cross between it and the host, how its time is measured, and its errors.

The rest of the engine calls these instead of branching on `device.type`, so that one stand-in device
exercises every path: the tests run the engine and both trainers on torch's `meta` device (tensors with
shapes and no values) to catch a tensor left on the host, without a GPU. Meta tensors read back as
zeros (`host`), which is all a shape-and-device check needs.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from magnet_cli.errors import DeviceError, UsageError
from magnet_cli.settings import check_device, check_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` takes the first CUDA device when there is one; asking for a device that is not here is a
    user error, named before any work starts."""
    name = check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    return device


def is_accelerator(device: torch.device) -> bool:
    """Whether model calls run off the host CPU (CUDA, or the tests' stand-in device)."""
    return device.type != "cpu"


# --- precision ------------------------------------------------------------------------------------------


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware. `torch.cuda.is_bf16_supported()` also counts
    emulation (T4 and V100 say yes and run it slower than fp32), so CUDA asks for Ampere (8.0) or later;
    a CPU needs AMX or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(check() for check in checks if check is not None)
    return False


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype model calls run in: `auto` takes bf16 where the device does it natively, else fp32."""
    precision = check_precision(precision)
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for model calls; fp32 (and the stand-in device) run as they are."""
    if dtype == torch.float32 or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# --- memory ----------------------------------------------------------------------------------------------


def free_memory(device: torch.device) -> int:
    """Bytes free now where the device keeps its tensors: GPU memory for CUDA, physical memory otherwise."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def memory_name(device: torch.device) -> str:
    return "GPU memory" if device.type == "cuda" else "memory"


def auto_batch_size(device: torch.device) -> int:
    """Windows per model call when the user gives none. On CPU 4 (batching gains little there and the
    refiner's activations grow with it); a GPU needs more windows per call to stay busy: 16 on a card with
    12 GiB or more (the refiner's batch of 16 at 256 px peaks near 2.6 GB), 8 on smaller ones."""
    if device.type != "cuda":
        return 4
    total = torch.cuda.get_device_properties(device).total_memory
    return 16 if total >= 12 * 2**30 else 8


def auto_read_threads(device: torch.device) -> int:
    """Reader threads when the user gives none: 2 on CPU, where the model needs the cores; on a GPU the
    readers feed it, so up to 8 of the host's cores."""
    if device.type != "cuda":
        return 2
    return max(2, min(8, os.cpu_count() or 2))


# --- crossing between host and device -------------------------------------------------------------------


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch onto the device. On CUDA through pinned memory with `non_blocking`: the copy is queued
    behind the work already on the stream instead of stalling the host."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def host(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's values on the host, waiting for them (the stand-in device's read as zeros)."""
    if tensor.is_meta:
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    return tensor.cpu()


class HostCopy:
    """A device tensor on its way to the host: the copy starts now (pinned, non_blocking on CUDA) and
    `result()` waits for it, so the thread that launched it goes on queueing model calls."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._event: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            self._tensor = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._tensor.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(tensor.device))
        else:
            self._tensor = host(tensor)

    def result(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
        return self._tensor


# --- time -----------------------------------------------------------------------------------------------


@dataclass
class StageClock:
    """Seconds spent in named stages (segmenter, refiner, selection) without a synchronize per call.

    On CUDA each stage is bracketed by events on the stream and read once at the end of a run (`totals`),
    so the host keeps queueing work; the sum of the stages over the wall time is the share of the run the
    GPU had work queued (an upper bound on its busy share: gaps inside a stage count as busy).
    Elsewhere the host's clock, as the work runs where it is launched.
    """

    device: torch.device
    _events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = field(default_factory=list)
    _seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(torch.cuda.current_stream(self.device))
            yield
            end.record(torch.cuda.current_stream(self.device))
            self._events.append((name, start, end))
            return
        began = time.perf_counter()
        yield
        self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - began

    def totals(self) -> dict[str, float]:
        """Seconds per stage so far (waits for the device's queued stages to finish)."""
        if self._events:
            self._events[-1][2].synchronize()
            for name, start, end in self._events:
                self._seconds[name] = self._seconds.get(name, 0.0) + start.elapsed_time(end) / 1000
            self._events.clear()
        return dict(self._seconds)


# --- errors ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def device_errors(device: torch.device, batch_size: int | None = None) -> Iterator[None]:
    """Out-of-memory and CUDA failures as one line (`DeviceError`) instead of a traceback."""
    try:
        yield
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        line = _first_line(error)
        if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in line or "out of memory" in line:
            hint = f"; try a smaller --batch-size (now {batch_size})" if batch_size and batch_size > 1 else ""
            where = "memory" if "CPUAllocator" in line else memory_name(device)  # the host's, on a GPU run too
            raise DeviceError(f"{device}: out of {where} ({line}){hint}") from None
        if "CUDA" in line:
            raise DeviceError(f"{device}: {line}") from None
        raise


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
