"""Generated inputs for the reader tests: small TIFFs, Zarr stores and rasters written into tmp_path."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import skimage.io
import tifffile
import zarr

HEIGHT, WIDTH = 300, 400  # not multiples of the 64-pixel tiles: edge tiles are partial


def pattern(
    height: int = HEIGHT, width: int = WIDTH, bands: int = 3, dtype: type = np.uint8, seed: int = 0
) -> np.ndarray:
    """Deterministic noise, so that any misplaced pixel shows."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random((height, width, bands)).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, (height, width, bands), dtype=dtype, endpoint=True)


def imsave(path: Path, array: np.ndarray) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low-contrast warnings
        skimage.io.imsave(path, array, check_contrast=False)
    return path


def make_labels(path: Path, mask: np.ndarray, classes) -> Path:
    """A finished label image of `mask`, written in bands of 150 rows into 200-pixel chunks."""
    from magnet_cli.io.labels import LabelWriter

    height, width = mask.shape
    with LabelWriter(path, height, width, classes, chunk_size=200, min_level_size=64) as writer:
        for y0 in range(0, height, 150):
            writer.write(y0, 0, mask[y0 : y0 + 150])
    return Path(path)


@pytest.fixture
def rgb() -> np.ndarray:
    return pattern()


@pytest.fixture
def read_level_spy() -> Callable:
    """Wrap a source's read_level; returns the list the (level, y0, x0, y1, x1) calls are appended to."""

    def spy(source) -> list[tuple[int, int, int, int, int]]:
        calls: list[tuple[int, int, int, int, int]] = []
        original = source.read_level

        def wrapper(level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
            calls.append((level, y0, x0, y1, x1))
            return original(level, y0, x0, y1, x1)

        source.read_level = wrapper
        return calls

    return spy


# ---------------------------------------------------------------------------------------------- TIFF
@pytest.fixture
def subifd_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    """Tiled RGB with two reduced levels in SubIFDs."""
    path = tmp_path / "subifds.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, subifds=2, tile=(64, 64), photometric="rgb", compression="zlib")
        tif.write(rgb[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb", compression="zlib")
        tif.write(rgb[::4, ::4], subfiletype=1, tile=(64, 64), photometric="rgb", compression="zlib")
    return path


@pytest.fixture
def pages_pyramid_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    """Tiled RGB whose reduced levels are top-level pages (subfiletype=1), not SubIFDs."""
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(64, 64), photometric="rgb")
        tif.write(rgb[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb")
    return path


@pytest.fixture
def striped_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    """Compressed strips of 16 rows: read through tifffile's Zarr store."""
    path = tmp_path / "striped.tif"
    tifffile.imwrite(path, rgb, rowsperstrip=16, photometric="rgb", compression="zlib")
    return path


@pytest.fixture
def raw_striped_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    """Uncompressed contiguous strips: memory-mapped."""
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, rgb, rowsperstrip=16, photometric="rgb")
    return path


@pytest.fixture
def planar_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    path = tmp_path / "planar.tif"
    tifffile.imwrite(
        path, np.moveaxis(rgb, 2, 0), planarconfig="separate", photometric="rgb", tile=(64, 64), compression="zlib"
    )
    return path


@pytest.fixture
def gray16_tiff(tmp_path: Path) -> Path:
    path = tmp_path / "gray16.tif"
    tifffile.imwrite(path, pattern(bands=1, dtype=np.uint16)[:, :, 0], tile=(64, 64), compression="zlib")
    return path


@pytest.fixture
def ome_tiff(tmp_path: Path) -> Path:
    """OME-TIFF with 3 channels (C, Y, X) and one SubIFD level."""
    path = tmp_path / "image.ome.tif"
    chw = np.moveaxis(pattern(), 2, 0).copy()
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(chw, subifds=1, tile=(64, 64), metadata={"axes": "CYX"}, photometric="minisblack")
        tif.write(chw[:, ::2, ::2], subfiletype=1, tile=(64, 64), photometric="minisblack")
    return path


@pytest.fixture
def svs_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    """Aperio-style: baseline, thumbnail, reduced level, label, macro."""
    path = tmp_path / "slide.svs"
    aperio = "Aperio Image Library v11.2.1\r\n400x300 (64x64) RGB|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(64, 64), photometric="rgb", description=aperio, metadata=None)
        tif.write(rgb[::8, ::8], photometric="rgb", description="Aperio Image Library thumbnail", metadata=None)
        tif.write(rgb[::4, ::4].copy(), tile=(64, 64), photometric="rgb", description="Aperio level", metadata=None)
        tif.write(rgb[:40, :50].copy(), subfiletype=1, photometric="rgb", description="Aperio label", metadata=None)
        tif.write(rgb[:60, :90].copy(), subfiletype=9, photometric="rgb", description="Aperio macro", metadata=None)
    return path


GEO_PIXEL_SCALE = [0.5, 0.5, 0.0]
GEO_TIEPOINT = [0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0]
GEO_KEYS = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633]


@pytest.fixture
def geotiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    path = tmp_path / "geo.tif"
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(64, 64),
        extratags=[
            (33550, 12, 3, tuple(GEO_PIXEL_SCALE), False),
            (33922, 12, 6, tuple(GEO_TIEPOINT), False),
            (34735, 3, len(GEO_KEYS), tuple(GEO_KEYS), False),
            (42113, 2, None, "-9999", False),
        ],
    )
    return path


@pytest.fixture
def truncated_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    """Header and IFD intact, compressed tile data cut in half."""
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, rgb, tile=(64, 64), photometric="rgb", compression="zlib")
    path = tmp_path / "truncated.tif"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def corrupt_tile_tiff(tmp_path: Path, rgb: np.ndarray) -> Path:
    """Tile (row 1, column 1) overwritten with garbage; the other tiles are fine."""
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, rgb, tile=(64, 64), photometric="rgb", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tiles_across = -(-WIDTH // 64)
        index = 1 * tiles_across + 1
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def empty_tiff(tmp_path: Path) -> Path:
    path = tmp_path / "empty.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile: "writing zero-size array to nonconformant TIFF"
        tifffile.imwrite(path, np.zeros((0, 10), np.uint8))
    return path


# ---------------------------------------------------------------------------------------------- Zarr
@pytest.fixture
def zarr_v2_hwc(tmp_path: Path, rgb: np.ndarray) -> Path:
    path = tmp_path / "v2.zarr"
    array = zarr.create_array(str(path), shape=rgb.shape, chunks=(64, 64, 3), dtype=rgb.dtype, zarr_format=2)
    array[:] = rgb
    return path


@pytest.fixture
def zarr_v3_chw(tmp_path: Path) -> Path:
    """(C, H, W) uint16 without dimension names: the band axis is inferred from the shape."""
    path = tmp_path / "v3.zarr"
    chw = np.moveaxis(pattern(dtype=np.uint16), 2, 0)
    array = zarr.create_array(str(path), shape=chw.shape, chunks=(1, 64, 64), dtype=chw.dtype, zarr_format=3)
    array[:] = chw
    return path


def write_ome_zarr(
    path: Path, levels: list[np.ndarray], axes: list[dict], scales: list[list[float]], version: str
) -> Path:
    """An OME-Zarr image written by hand: NGFF 0.4 (Zarr v2, 'multiscales') or 0.5 (Zarr v3, 'ome')."""
    zarr_format = 3 if version == "0.5" else 2
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = [
        {"path": f"s{i}", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        for i, scale in enumerate(scales)
    ]
    multiscales = [{"name": "image", "axes": axes, "datasets": datasets}]
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    else:
        multiscales[0]["version"] = version
        group.attrs["multiscales"] = multiscales
    for i, level in enumerate(levels):
        chunks = tuple(min(64, n) if n > 4 else 1 for n in level.shape)
        array = group.create_array(f"s{i}", shape=level.shape, chunks=chunks, dtype=level.dtype)
        array[:] = level
    return path


@pytest.fixture
def ome_zarr_04(tmp_path: Path, rgb: np.ndarray) -> Path:
    """NGFF 0.4, axes (c, y, x), three levels with scales 1, 2, 4 (floor-shaped by striding)."""
    chw = np.moveaxis(rgb, 2, 0)
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    levels = [chw, chw[:, ::2, ::2], chw[:, ::4, ::4]]
    scales = [[1.0, 0.25, 0.25], [1.0, 0.5, 0.5], [1.0, 1.0, 1.0]]
    return write_ome_zarr(tmp_path / "image.ome.zarr", levels, axes, scales, "0.4")


def write_tczyx_05(path: Path, times: int, planes: int) -> Path:
    """NGFF 0.5, axes (t, c, z, y, x) float32 100x120, plane (t, z) from seed 10 t + z; two levels."""
    stacks = [
        [np.moveaxis(pattern(100, 120, dtype=np.float32, seed=10 * t + z), 2, 0) for z in range(planes)]
        for t in range(times)
    ]
    data = np.stack([np.stack(zs, axis=1) for zs in stacks])
    axes = [
        {"name": "t", "type": "time"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    levels = [data, data[..., ::2, ::2]]
    scales = [[1.0, 1.0, 1.0, 0.3, 0.3], [1.0, 1.0, 1.0, 0.6, 0.6]]
    return write_ome_zarr(path, levels, axes, scales, "0.5")


@pytest.fixture
def ome_zarr_05(tmp_path: Path) -> Path:
    """NGFF 0.5 (t, c, z, y, x) with two time points and one z plane: one stack axis besides y and x."""
    return write_tczyx_05(tmp_path / "image05.ome.zarr", times=2, planes=1)


# ---------------------------------------------------------------------------------------------- rasters
@pytest.fixture
def png_rgb(tmp_path: Path, rgb: np.ndarray) -> Path:
    return imsave(tmp_path / "rgb.png", rgb)


@pytest.fixture
def jpeg_rgb(tmp_path: Path) -> Path:
    smooth = np.zeros((120, 160, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 160, dtype=np.uint8)[None, :]
    smooth[..., 1] = np.linspace(0, 255, 120, dtype=np.uint8)[:, None]
    smooth[..., 2] = 128
    return imsave(tmp_path / "rgb.jpg", smooth)


# ---------------------------------------------------------------------------------------------- slides
VMS_MPP = 0.25  # micrometres per pixel: PhysicalWidth (nanometres) / width


@pytest.fixture
def vms_slide(tmp_path: Path, rgb: np.ndarray) -> Path:
    """A Hamamatsu VMS slide (not a TIFF: read through OpenSlide): a key file naming one JPEG with restart
    markers (OpenSlide's tiles) and a map JPEG. Reading it needs the [openslide] extra."""
    pytest.importorskip("openslide", reason="no [openslide] extra")
    from PIL import Image

    folder = tmp_path / "vms"
    folder.mkdir()
    image = rgb[:256, :384]  # whole 8x8 blocks: OpenSlide tiles a VMS JPEG by its restart intervals
    Image.fromarray(image).save(folder / "scan.jpg", quality=95, subsampling=0, restart_marker_blocks=8)
    Image.fromarray(image[::8, ::8]).save(folder / "scan_map.jpg", quality=95, subsampling=0, restart_marker_blocks=1)
    path = folder / "scan.vms"
    path.write_text(
        "[Virtual Microscope Specimen]\nNoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\nImageFile=scan.jpg\n"
        f"MapFile=scan_map.jpg\nPhysicalWidth={384 * VMS_MPP * 1000:.0f}\nPhysicalHeight={256 * VMS_MPP * 1000:.0f}\n"
    )
    return path
