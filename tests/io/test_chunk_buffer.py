"""ChunkAssembler stores each chunk once, complete, and stays correct for overlapping or partial writes."""

import numpy as np
import zarr

from magnet_cli.io.chunk_buffer import ChunkAssembler


def make_array(tmp_path, shape, chunks):
    return zarr.create_array(str(tmp_path / "a.zarr"), shape=shape, chunks=chunks, dtype="uint8", fill_value=0)


def test_windows_that_tile_the_array_store_every_chunk_exactly_once(tmp_path, monkeypatch):
    array = make_array(tmp_path, (100, 130), (32, 32))
    stores = []
    original = type(array).__setitem__
    monkeypatch.setattr(type(array), "__setitem__", lambda self, k, v: stores.append(k) or original(self, k, v))
    expected = np.random.default_rng(0).integers(1, 255, (100, 130), dtype=np.uint8)
    assembler = ChunkAssembler(array)
    for y in range(0, 100, 25):  # windows not aligned with chunks
        for x in range(0, 130, 26):
            assembler.write((y, x), expected[y : y + 25, x : x + 26])
    assembler.flush()
    assert np.array_equal(array[:], expected)
    assert len(stores) == 4 * 5  # ceil(100/32) x ceil(130/32) chunks, one store each


def test_partial_and_repeated_writes_keep_the_right_values(tmp_path):
    array = make_array(tmp_path, (40, 40), (16, 16))
    assembler = ChunkAssembler(array)
    assembler.write((0, 0), np.full((16, 16), 7, np.uint8))  # completes chunk (0, 0)
    assembler.write((8, 8), np.full((4, 4), 9, np.uint8))  # patches the stored chunk (0, 0)
    assembler.write((20, 20), np.full((3, 3), 5, np.uint8))  # a chunk never completed
    assembler.flush()
    out = array[:]
    assert (out[:8, :8] == 7).all() and (out[8:12, 8:12] == 9).all()
    assert (out[20:23, 20:23] == 5).all() and out[16:20, 16:20].sum() == 0


def test_leading_axes_are_chunked_too(tmp_path):
    array = zarr.create_array(str(tmp_path / "p.zarr"), shape=(3, 20, 20), chunks=(1, 8, 8), dtype="uint8")
    data = np.random.default_rng(1).integers(0, 255, (3, 20, 20), dtype=np.uint8)
    assembler = ChunkAssembler(array)
    assembler.write((0, 0, 0), data[:, :10])
    assembler.write((0, 10, 0), data[:, 10:])
    assembler.flush()
    assert np.array_equal(array[:], data)
