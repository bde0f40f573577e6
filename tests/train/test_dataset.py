"""The dataset layout, its errors, and the window / refiner-pair samplers."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings, strategies as st

from magnet_cli.errors import InputError, UsageError
from magnet_cli.io.array import ArraySource
from magnet_cli.io.base import Box
from magnet_cli.settings import RunSettings
from magnet_cli.synthetic import SYNTH_CLASSES, SceneSpec, render_region
from magnet_cli.train.dataset import (
    RefinerPairSampler,
    WindowSampler,
    augment,
    epoch_rng,
    load_dataset,
    parse_synth_spec,
    read_mask_nearest,
)

from tests.train.conftest import INPUT, SCENE


def make_folder(root: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], mask_ext: str = ".png") -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, (image, mask) in pairs.items():
        iio.imwrite(root / "images" / f"{name}.png", image)
        if mask_ext == ".tif":
            tifffile.imwrite(root / "masks" / f"{name}.tif", mask)
        else:
            iio.imwrite(root / "masks" / f"{name}{mask_ext}", mask)
    return root


def rgb(h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_synth_folder_loads_with_its_classes(dataset_dir):
    dataset = load_dataset(dataset_dir)
    assert len(dataset) == 2
    assert [c.name for c in dataset.classes] == [c.name for c in SYNTH_CLASSES]
    assert (dataset.items[0].height, dataset.items[0].width) == (SCENE, SCENE)


def test_masks_are_matched_by_stem_whatever_their_extension(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:, :] = 2
    dataset = load_dataset(make_folder(tmp_path, {"a": (rgb(), mask)}, mask_ext=".tif"))
    assert dataset.num_classes == 3  # no classes.json: largest id + 1
    labels = dataset.read_mask(0, Box(0, 0, 16, 16), (16, 16))
    assert torch.equal(labels, torch.from_numpy(mask.astype(np.int64)))


def test_empty_images_folder_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_dataset(tmp_path)


def test_folder_without_masks_subfolder_is_a_clear_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="no masks/"):
        load_dataset(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such dataset folder"):
        load_dataset(tmp_path / "nowhere")


def test_image_without_mask_is_named(tmp_path):
    root = make_folder(tmp_path, {"a": (rgb(), np.zeros((16, 16), np.uint8))})
    iio.imwrite(root / "images" / "lonely.png", rgb())
    with pytest.raises(InputError, match="lonely.png"):
        load_dataset(root)


def test_mismatched_sizes_are_refused(tmp_path):
    root = make_folder(tmp_path, {"a": (rgb(16, 16), np.zeros((16, 12), np.uint8))})
    with pytest.raises(InputError, match="16 x 12 but image a.png is 16 x 16"):
        load_dataset(root)


def test_class_id_beyond_the_class_file_is_refused(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[0, 0] = 7
    root = make_folder(tmp_path, {"a": (rgb(), mask)})
    (root / "classes.json").write_text(json.dumps([{"name": "x"}, {"name": "y"}, {"name": "z"}]))
    with pytest.raises(InputError, match=r"class id\(s\) \[7\] but only 3 classes"):
        load_dataset(root)


def test_ignore_index_is_not_a_class(tmp_path):
    mask = np.ones((16, 16), np.uint8)
    mask[0, :] = 255
    dataset = load_dataset(make_folder(tmp_path, {"a": (rgb(), mask)}))
    assert dataset.num_classes == 2
    with pytest.raises(InputError, match="class id"):
        load_dataset(tmp_path, classes="2", ignore_index=0)


def test_rgb_mask_is_refused(tmp_path):
    root = make_folder(tmp_path, {"a": (rgb(), rgb())})
    with pytest.raises(InputError, match="one band"):
        load_dataset(root)


def test_synth_spec_renders_scenes_in_memory():
    dataset = load_dataset("synth:3:2:64")
    assert len(dataset) == 2 and dataset.num_classes == len(SYNTH_CLASSES)
    _, expected = render_region(SceneSpec(4, 64, 64), 0, 0, 64, 64)
    labels = dataset.read_mask(1, Box(0, 0, 64, 64), (64, 64))
    assert torch.equal(labels, torch.from_numpy(expected.astype(np.int64)))
    with pytest.raises(UsageError, match="synth:SEED:COUNT:SIZE"):
        parse_synth_spec("synth:1:2")


def test_mask_reads_nearest_pixel_centres():
    mask = np.arange(64, dtype=np.uint8).reshape(8, 8)
    source = ArraySource(mask)
    # A 4x4 box read at 2x2: output pixel centres fall at source pixels 2+1=3... i.e. floor(2 + (i+0.5)*2)
    got = read_mask_nearest(source, Box(2, 2, 6, 6), (2, 2))
    assert got.tolist() == [[mask[3, 3], mask[3, 5]], [mask[5, 3], mask[5, 5]]]


def test_window_sampler_is_deterministic_given_the_seed(dataset_dir):
    sampler = WindowSampler(load_dataset(dataset_dir), (INPUT, INPUT))
    a_images, a_masks = sampler.batch(epoch_rng(5, 1), 4)
    b_images, b_masks = sampler.batch(epoch_rng(5, 1), 4)
    c_images, _ = sampler.batch(epoch_rng(6, 1), 4)
    assert a_images.shape == (4, 3, INPUT, INPUT) and a_masks.shape == (4, INPUT, INPUT)
    assert a_masks.dtype == torch.int64 and 0.0 <= float(a_images.min()) and float(a_images.max()) <= 1.0
    assert torch.equal(a_images, b_images) and torch.equal(a_masks, b_masks)
    assert not torch.equal(a_images, c_images)


def test_window_sampler_draws_every_scale_level(dataset_dir):
    sampler = WindowSampler(load_dataset(dataset_dir), (INPUT, INPUT))
    rng = np.random.default_rng(0)
    levels = {sampler.draw_window(rng)[1].level for _ in range(60)}
    assert levels == {0, 1, 2}


def test_augment_transforms_every_array_alike():
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    mask = image[0].to(torch.int64)
    for seed in range(8):
        out_image, out_mask = augment([image, mask], np.random.default_rng(seed))
        assert torch.equal(out_image[0].to(torch.int64), out_mask)


@pytest.mark.parametrize("coarse_from", ["parent", "whole"])
def test_refiner_pairs_crop_a_coarser_map(dataset_dir, coarse_from):
    dataset = load_dataset(dataset_dir)

    def segment(images: torch.Tensor) -> torch.Tensor:  # "probabilities": the image itself
        return images

    sampler = RefinerPairSampler(dataset, (INPUT, INPUT), segment, augment=False, coarse_from=coarse_from)
    coarse, fine, labels = sampler.batch(np.random.default_rng(1), 3)
    assert coarse.shape == fine.shape == (3, 3, INPUT, INPUT) and labels.shape == (3, INPUT, INPUT)
    # The coarse crop is a blurred version of the fine window: close on average, not equal.
    assert float((coarse - fine).abs().mean()) < 0.2
    assert not torch.equal(coarse, fine)
    again = RefinerPairSampler(dataset, (INPUT, INPUT), segment, coarse_from=coarse_from)
    repeat = RefinerPairSampler(dataset, (INPUT, INPUT), segment, coarse_from=coarse_from)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert all(torch.equal(a, b) for a, b in zip(again.batch(rng_a, 3), repeat.batch(rng_b, 3)))


def test_parent_coarse_maps_are_one_level_coarser_than_whole_image_ones(dataset_dir):
    """Adjacent-level pairs are only 2x blurred; whole-image ones up to 2^(depth-1)x."""
    dataset = load_dataset(dataset_dir)

    def blur(source: str) -> float:
        sampler = RefinerPairSampler(dataset, (INPUT, INPUT), lambda x: x, augment=False, coarse_from=source)
        coarse, fine, _ = sampler.batch(np.random.default_rng(3), 16)  # same draws for both sources
        return float((coarse - fine).abs().mean())

    assert blur("parent") < blur("whole")


def test_unknown_coarse_from_is_a_usage_error(dataset_dir):
    with pytest.raises(UsageError, match="--coarse-from"):
        RefinerPairSampler(load_dataset(dataset_dir), (INPUT, INPUT), lambda x: x, coarse_from="sideways")


def test_mask_read_in_bands_equals_one_read(monkeypatch):
    from magnet_cli.train import dataset as dataset_module

    mask = np.random.default_rng(0).integers(0, 6, (40, 30), dtype=np.uint8)
    source = ArraySource(mask)
    box = Box(1.5, 2.0, 39.0, 29.5)
    whole = read_mask_nearest(source, box, (13, 7))
    monkeypatch.setattr(dataset_module, "SCAN_ROWS_PIXELS", 30)  # a few source rows per band
    assert torch.equal(read_mask_nearest(source, box, (13, 7)), whole)
    ys = np.floor(1.5 + (np.arange(13) + 0.5) * 37.5 / 13).astype(int)
    xs = np.floor(2.0 + (np.arange(7) + 0.5) * 27.5 / 7).astype(int)
    assert whole.tolist() == mask[np.ix_(ys, xs)].tolist()


def test_tiff_dataset_reads_windows(tmp_path):
    from magnet_cli.synthetic import synth

    synth(tmp_path, size=96, count=1, format="tiff", run=RunSettings(progress=False))
    dataset = load_dataset(tmp_path)
    images, masks = WindowSampler(dataset, (INPUT, INPUT)).batch(epoch_rng(0, 1), 2)
    assert images.shape == (2, 3, INPUT, INPUT) and int(masks.max()) < dataset.num_classes


@settings(max_examples=40, deadline=None)
@given(
    y0=st.floats(0, 20), x0=st.floats(0, 20), height=st.floats(1, 20), width=st.floats(1, 20),
    out_h=st.integers(1, 12), out_w=st.integers(1, 12),
)
def test_mask_nearest_picks_the_source_pixel_under_each_output_centre(y0, x0, height, width, out_h, out_w):
    mask = (np.arange(40 * 40) % 251).astype(np.uint8).reshape(40, 40)
    got = read_mask_nearest(ArraySource(mask), Box(y0, x0, y0 + height, x0 + width), (out_h, out_w)).numpy()
    for i in range(out_h):
        for j in range(out_w):
            y = min(39, int(np.floor(y0 + (i + 0.5) * height / out_h)))
            x = min(39, int(np.floor(x0 + (j + 0.5) * width / out_w)))
            assert got[i, j] == mask[y, x]


def test_refiner_pairs_can_be_random_crops_of_the_same_place(dataset_dir):
    dataset = load_dataset(dataset_dir)
    sampler = RefinerPairSampler(dataset, (INPUT, INPUT), lambda x: x, augment=False, crop=INPUT // 2)
    coarse, fine, labels = sampler.batch(np.random.default_rng(5), 4)
    assert coarse.shape == fine.shape == (4, 3, INPUT // 2, INPUT // 2) and labels.shape == (4, INPUT // 2, INPUT // 2)
    # fine is the image itself, so each crop's pixels must be found in a window read of the image
    assert float((coarse - fine).abs().mean()) < 0.2
    with pytest.raises(UsageError, match="--crop"):
        RefinerPairSampler(dataset, (INPUT, INPUT), lambda x: x, crop=INPUT + 1)
