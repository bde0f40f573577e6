"""Time and peak memory of `--vector` polygonising alone, on a big mask of smooth blobs.

    python benchmarks/vector_memory.py --size 16384

Writes a SIZE^2 label array (tests/io/test_vector.py's blobs at SIZE/16, each pixel a 16 x 16 block, so
regions cross many 2048^2 tiles) into a Zarr store, then polygonises it into a GeoPackage in a fresh
process and prints that process's seconds, peak RSS and feature count. Memory grows with the regions
crossing tile edges (held until the merge), not with the pixels.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

POLYGONISE = """
import re, sys, time, zarr, pyogrio
from pathlib import Path
from magnet_cli.classes import default_classes
from magnet_cli.io.vector import write_vector
labels, target = zarr.open_array(sys.argv[1], mode="r"), Path(sys.argv[2])
start = time.perf_counter()
write_vector([labels], target, default_classes(4))
seconds = time.perf_counter() - start
peak = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
print(f"{labels.shape[0]}^2: {seconds:.1f} s, peak RSS {peak:.0f} MB, {pyogrio.read_info(target)['features']} polygons")
"""


def make_mask(path: Path, size: int) -> None:
    import numpy as np
    import zarr

    sys.path.insert(0, str(ROOT))
    from tests.io.test_vector import blobs

    small = blobs(size // 16, size // 16, seed=7, sigma=4)
    array = zarr.create_array(path, shape=(size, size), chunks=(1024, 1024), dtype="uint8")
    for y in range(0, size, 1024):
        array[y : y + 1024] = np.kron(small[y // 16 : (y + 1024) // 16], np.ones((16, 16), np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="mask side in pixels (a multiple of 1024)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        mask = Path(folder) / "mask.zarr"
        make_mask(mask, args.size)
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, from this (big) parent process.
        imports = (
            "import re, zarr, pyogrio, shapely, rasterio.features, magnet_cli.io.vector; "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)"
        )
        baseline = subprocess.run([sys.executable, "-c", imports], capture_output=True, text=True, check=True, cwd=ROOT)
        subprocess.run([sys.executable, "-c", POLYGONISE, str(mask), str(Path(folder) / "mask.gpkg")], check=True, cwd=ROOT)
        print(f"(the imports alone: {baseline.stdout.strip()} MB)")


if __name__ == "__main__":
    main()
