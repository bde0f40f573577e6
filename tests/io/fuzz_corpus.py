"""Seeded hostile inputs (byte flips, truncations and header edits of a small tiled TIFF; crafted Zarr and
OME-Zarr metadata) and a child-process runner that opens and fully reads each one under a time limit and a
memory cap. Shared by tests/test_fuzz_inputs.py (a small corpus in CI) and benchmarks/fuzz_inputs.py.

Every case must end as a clean InputError or a completed read; anything else (another exception, a hang,
a MemoryError or a kill for memory) is a defect.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr

HEIGHT = WIDTH = 256
TILE = 64
MEMORY_CAP = 2 << 30  # RLIMIT_AS of the child: a hostile header must not reach gigabytes
TIMEOUT_S = 20.0
TAG_FORMATS = {3: "H", 4: "I", 16: "Q", 8: "h", 9: "i"}  # TIFF field type -> struct code
ABSURD_SIZES = [0, 1, 255, 257, 100_000, 10**7, 2**31 - 1, 2**32 - 1]
REPO = Path(__file__).resolve().parents[2]  # the child imports magnet_cli from this checkout
RESULTS = ("clean error", "read completed", "traceback", "hang", "memory blow-up")


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]  # writes the input under a fresh folder, returns its path


# ---------------------------------------------------------------------------------------------- TIFF
def write_base_tiff(path: Path, kind: str = "rgb8") -> Path:
    """The 256x256 tiled (64x64) image every TIFF case starts from: zlib RGB uint8, or float32 gray."""
    rng = np.random.default_rng(0)
    if kind == "float32":
        data = rng.random((HEIGHT, WIDTH), dtype=np.float32)
        tifffile.imwrite(path, data, tile=(TILE, TILE), compression="zlib", metadata=None)
    else:
        data = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        tifffile.imwrite(path, data, tile=(TILE, TILE), photometric="rgb", compression="zlib", metadata=None)
    return path


def patch_tag(path: Path, code: int, values: list[int] | int, start: int = 0) -> Path:
    """Overwrite values of a tag of the first page in place (from index `start`), keeping its field type."""
    values = [values] if isinstance(values, int) else values
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[code]
        fmt, offset = tif.byteorder + TAG_FORMATS[tag.dtype], tag.valueoffset
    size = struct.calcsize(fmt)
    data = bytearray(path.read_bytes())
    for i, value in enumerate(values):
        limit = (1 << (8 * size)) - 1
        struct.pack_into(fmt, data, offset + (start + i) * size, min(max(value, 0), limit))
    path.write_bytes(bytes(data))
    return path


def float_tiff_with(path: Path, value: float, count: int, seed: int) -> Path:
    """Float32 tiled TIFF with `count` pixels set to `value` (NaN, inf, 1e31, ...)."""
    rng = np.random.default_rng(seed)
    data = rng.random((HEIGHT, WIDTH), dtype=np.float32).astype(np.float64)
    data.flat[rng.choice(data.size, count, replace=False)] = value
    tifffile.imwrite(path, data, tile=(TILE, TILE), compression="zlib", metadata=None)
    return path


def _tiff_cases(rng: random.Random, index: int) -> Case:
    kind = rng.choice(["flip", "flip_header", "truncate", "width", "length", "bits", "sampleformat",
                       "offsets", "bytecounts", "float_values"])
    base_kind = "float32" if kind == "sampleformat" or rng.random() < 0.2 else "rgb8"
    seed = rng.randrange(1 << 30)
    name = f"tiff-{index:04d}-{kind}-{base_kind}"

    def build(folder: Path) -> Path:
        local = random.Random(seed)
        path = write_base_tiff(folder / "case.tif", base_kind)
        data = bytearray(path.read_bytes())
        if kind in ("flip", "flip_header"):
            end = 512 if kind == "flip_header" else len(data)
            for _ in range(local.randint(1, 8)):
                data[local.randrange(8, end)] ^= 1 << local.randrange(8)
            path.write_bytes(bytes(data))
        elif kind == "truncate":
            path.write_bytes(bytes(data[: local.randrange(8, len(data))]))
        elif kind in ("width", "length"):
            patch_tag(path, 256 if kind == "width" else 257, local.choice(ABSURD_SIZES))
        elif kind == "bits":
            bits = local.choice([0, 1, 4, 7, 12, 16, 24, 32, 64])
            patch_tag(path, 258, [bits] * (3 if base_kind == "rgb8" else 1))
        elif kind == "sampleformat":
            patch_tag(path, 339, local.choice([0, 1, 2, 4, 5, 6, 99]))
        elif kind in ("offsets", "bytecounts"):
            code = 324 if kind == "offsets" else 325
            tiles = (HEIGHT // TILE) * (WIDTH // TILE)
            value = local.choice([0, 1, len(data) - 1, len(data) * 4, 2**32 - 1, local.randrange(len(data))])
            patch_tag(path, code, value, start=local.randrange(tiles))
        elif kind == "float_values":
            float_tiff_with(path, local.choice([float("nan"), float("inf"), -float("inf"), 1e31, -1e300]),
                            local.choice([1, 50]), seed)
        return path

    return Case(name, build)


# ---------------------------------------------------------------------------------------------- Zarr
def write_zarr_array(path: Path, meta: dict, chunks: dict[str, bytes] | None = None) -> Path:
    """A Zarr v2 array folder written by hand: `.zarray` from `meta`, and raw chunk files."""
    path.mkdir(parents=True)
    base = {"zarr_format": 2, "chunks": [TILE, TILE], "compressor": None, "fill_value": 0, "order": "C",
            "filters": None, "dtype": "|u1", "shape": [HEIGHT, WIDTH]}
    (path / ".zarray").write_text(json.dumps({**base, **meta}))
    for key, value in (chunks or {}).items():
        (path / key).write_bytes(value)
    return path


def write_ome_zarr(path: Path, dataset_path: str, *, version: str = "0.4", shape: tuple = (HEIGHT, WIDTH)) -> Path:
    """A one-level OME-Zarr image whose dataset path is `dataset_path`, beside an array it must not reach."""
    zarr_format = 3 if version == "0.5" else 2
    outside = zarr.open_group(str(path.parent), mode="a", zarr_format=zarr_format)
    outside.create_array("secret", data=np.full((HEIGHT, WIDTH), 7, np.uint8), chunks=(TILE, TILE))
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("0", data=np.zeros(shape, np.uint8), chunks=(TILE, TILE))
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    multiscales = [{"name": "image", "axes": axes, "datasets": [{"path": dataset_path}]}]
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    else:
        multiscales[0]["version"] = version
        group.attrs["multiscales"] = multiscales
    return path


def _zarr_cases(rng: random.Random, index: int) -> Case:
    kind = rng.choice(["shape", "dtype", "path", "missing_chunks", "bad_chunk", "bad_json", "nan_fill"])
    seed = rng.randrange(1 << 30)
    name = f"zarr-{index:04d}-{kind}"

    def build(folder: Path) -> Path:
        local = random.Random(seed)
        path = folder / "case.zarr"
        full = {f"{i}.{j}": bytes(TILE * TILE) for i in range(HEIGHT // TILE) for j in range(WIDTH // TILE)}
        if kind == "shape":
            shape = [local.choice([10**7, 2**40, 0, -1, 3, HEIGHT]), local.choice([10**7, 2**40, 0, WIDTH])]
            extra = local.choice([[], [3], [10**6]])
            meta = {"shape": shape + extra, "chunks": [TILE, TILE] + [1] * len(extra)}
            return write_zarr_array(path, meta, {} if local.random() < 0.5 else {"0.0" + ".0" * len(extra): b"\0"})
        if kind == "dtype":
            dtype = local.choice(["<i4", "|O", "<c8", "|b1", "|V8", "<M8[s]", "bogus", "<f8", ">u2", "<u4"])
            return write_zarr_array(path, {"dtype": dtype}, {})
        if kind == "path":
            name_ = local.choice(["../secret", "/secret", "0/../../secret", "", ".", "./0", "0/", "..", "missing",
                                  "0", 7])
            return write_ome_zarr(path, name_, version=local.choice(["0.4", "0.5"]))
        if kind == "missing_chunks":
            keep = dict(local.sample(sorted(full.items()), local.randrange(len(full))))
            return write_zarr_array(path, {}, keep)
        if kind == "bad_chunk":
            key = local.choice(sorted(full))
            full[key] = bytes(local.randrange(256) for _ in range(local.choice([0, 5, TILE * TILE + 9])))
            return write_zarr_array(path, {"compressor": local.choice([None, {"id": "zlib", "level": 1}])}, full)
        if kind == "bad_json":
            write_zarr_array(path, {}, full)
            text = (path / ".zarray").read_text()
            (path / ".zarray").write_text(text[: local.randrange(len(text))])
            return path
        # nan_fill: float array whose missing chunks read as the fill value NaN
        return write_zarr_array(path, {"dtype": "<f4", "fill_value": "NaN"}, {})

    return Case(name, build)


def corpus(seed: int, count: int) -> list[Case]:
    """`count` cases drawn from `seed`: about two thirds TIFF edits, one third Zarr/OME-Zarr metadata."""
    rng = random.Random(seed)
    return [_tiff_cases(rng, i) if rng.random() < 0.65 else _zarr_cases(rng, i) for i in range(count)]


# ---------------------------------------------------------------------------------------------- runner
# One child imports magnet_cli (torch takes seconds) once, then forks a grandchild per case: the grandchild
# caps its address space at what the import mapped plus `cap`, opens and fully reads the case, and reports
# through a pipe; the child kills it after `timeout` seconds. One JSON line per case comes back.
SERVER = textwrap.dedent(
    """
    import json, os, resource, select, signal, sys
    from magnet_cli.errors import InputError
    from magnet_cli.io.base import Box
    from magnet_cli.io.open import open_image

    def full_read(path):
        with open_image(path) as source:
            # The whole image at level 0, window by window, through the same read path as segment.
            for y in range(0, source.height, 512):
                for x in range(0, source.width, 512):
                    h, w = min(512, source.height - y), min(512, source.width - x)
                    tensor = source.read(Box(y, x, y + h, x + w), h, w)
                    assert tensor.shape == (3, h, w) and bool(tensor.isfinite().all())
            # And one coarse read of the whole image, as the first level of the window tree does.
            source.read(Box(0, 0, source.height, source.width), 64, 64)

    def case(path, write):
        mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + {cap}, mapped + {cap}))
        try:
            full_read(path)
            result = ("read completed", "")
        except InputError as exc:
            text = str(exc)
            result = ("clean error", text) if "\\n" not in text else ("traceback", "several lines: " + text)
        except MemoryError as exc:
            result = ("memory blow-up", f"MemoryError {{exc}}")
        except BaseException as exc:
            result = ("traceback", f"{{type(exc).__name__}}: {{exc}}")
        os.write(write, json.dumps(result).encode())

    for path in sys.argv[1:]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                case(path, write)
            finally:
                os._exit(0)
        os.close(write)
        ready, _, _ = select.select([read], [], [], {timeout})
        if ready:
            data = b""
            while chunk := os.read(read, 1 << 16):
                data += chunk
            _, status = os.waitpid(pid, 0)
            if data:
                result = json.loads(data)
            else:
                result = ["memory blow-up", f"died with status {{status}}"]
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            result = ["hang", "no answer in {timeout} s"]
        os.close(read)
        print(json.dumps(result), flush=True)
    """
)


def run_cases(paths: list[Path], timeout: float = TIMEOUT_S, cap: int = MEMORY_CAP) -> list[tuple[str, str]]:
    """(one of RESULTS, the error or what went wrong) of opening and fully reading each path."""
    command = [sys.executable, "-c", SERVER.format(cap=cap, timeout=timeout), *map(str, paths)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60 + len(paths) * (timeout + 5))
    results = [tuple(json.loads(line)) for line in done.stdout.splitlines() if line.startswith("[")]
    if len(results) != len(paths):
        raise RuntimeError(f"fuzz runner stopped after {len(results)} of {len(paths)} cases: {done.stderr[-2000:]}")
    return results


def build_case(case: Case, folder: Path) -> Path:
    """Build a case in a fresh folder (removing what an earlier case left there)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return case.build(folder)
