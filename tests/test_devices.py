"""The device path without a GPU: a stand-in device (torch's `meta`: shapes, no values) runs the engine and
both trainers, so a tensor left on the host next to a device tensor fails here as it would on CUDA
("Expected all tensors to be on the same device"); CUDA's own errors and memory checks through fakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from magnet_cli import devices
from magnet_cli.cli import app
from magnet_cli.errors import DeviceError, UsageError
from magnet_cli.io.array import ArraySource
from magnet_cli.models.bundle import load_bundle
from magnet_cli.pipeline import Engine, check_level_maps_fit
from magnet_cli.pyramid import make_plan
from magnet_cli.refine import crop_resize, kth_largest_by_bisection, median_blur, top_mask
from magnet_cli.settings import InferenceSettings, RefinerTraining, RunSettings, SegmenterTraining
from magnet_cli.train.dataset import epoch_rng
from magnet_cli.train.refiner import RefinerTask
from magnet_cli.train.segmenter import SegmenterTask

from tests.conftest import NUM_CLASSES, random_rgb, tiny_bundle
from tests.train.conftest import INPUT, OPTIONS, dataset_dir, segmenter_bundle  # noqa: F401 (fixtures)

META = torch.device("meta")


@pytest.fixture
def stand_in(monkeypatch):
    """Every `--device` resolves to the meta device, as `cuda` would to a GPU."""
    monkeypatch.setattr(devices, "resolve_device", lambda name="auto": META)
    return META


def test_meta_tensors_mixed_with_host_tensors_fail_like_cuda():
    """The premise of the stand-in: mixing devices fails on meta as it does on CUDA (cf. the fixed
    `crop_resize`, whose boxes came from the host while the maps were on the device)."""
    with pytest.raises(RuntimeError, match="device"):
        torch.zeros(2, device=META) + torch.ones(2)


@pytest.mark.parametrize(
    "mode, selection", [("magnet", "window"), ("magnet", "global"), ("fast", "global"), ("patch", "window"), ("downsample", "window")]
)
def test_every_mode_runs_on_the_stand_in_device(stand_in, mode, selection):
    engine = Engine(tiny_bundle(), InferenceSettings(mode=mode, selection=selection, device="cuda"))
    seen: dict[tuple, torch.device] = {}

    def sink(region, probabilities):
        y0, x0, y1, x1 = region
        assert probabilities.shape == (NUM_CLASSES, y1 - y0, x1 - x0)
        seen[region] = probabilities.device

    stats = engine.run(ArraySource(random_rgb(150, 110)), sink)
    assert stats.windows > 0 and set(seen.values()) == {META}  # maps stay on the device until the sink
    assert sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in seen) == 150 * 110


def test_segment_writes_labels_made_on_the_stand_in_device(stand_in, tmp_path, bundle_dir):
    """The GPU-fed sink (argmax and histogram on the device, copied back as bytes) reaches the writer."""
    from magnet_cli.io.labels import read_labels
    from magnet_cli.segmentation import segment
    from magnet_cli.settings import ModelSettings, OutputSettings

    image = tmp_path / "in.png"
    import imageio.v3 as iio

    iio.imwrite(image, random_rgb(90, 70))
    results = segment(
        [image], tmp_path / "out.zarr", model=ModelSettings(model=str(bundle_dir)),
        inference=InferenceSettings(device="cuda"), outputs=OutputSettings(write_probabilities=True),
        run=RunSettings(progress=False),
    )
    assert results[0].status == "ok" and results[0].precision == "fp32"
    labels = read_labels(tmp_path / "out.zarr")
    assert labels.shape == (90, 70) and not labels.any()  # the stand-in's values read back as zeros
    assert len(results[0].class_pixels) == NUM_CLASSES  # counted on the device (as zeros, too)


def test_refiner_training_runs_on_the_stand_in_device(stand_in, dataset_dir, segmenter_bundle):  # noqa: F811
    from magnet_cli.settings import ModelSettings

    for coarse_from in ("parent", "whole"):
        task = RefinerTask(dataset_dir, ModelSettings(model=str(segmenter_bundle)),
                           RefinerTraining(batch_size=2, val_pairs=2, coarse_from=coarse_from, device="cuda"))
        model, _ = task.configure(devices.resolve_device("cuda"))
        assert next(model.parameters()).device == META
        loss, predicted, labels = task.step(task.draw(epoch_rng(0, 1)))
        assert predicted.device == META and labels.device == META
        assert "refined_miou" in task.validate()
        task.close()


def test_segmenter_training_runs_on_the_stand_in_device(stand_in, dataset_dir):  # noqa: F811
    task = SegmenterTask(dataset_dir, SegmenterTraining(
        architecture_options=tuple(OPTIONS.items()), input_size=(INPUT, INPUT), batch_size=2, val_windows=2, device="cuda"))
    model, _ = task.configure(devices.resolve_device("cuda"))
    loss, predicted, _ = task.step(task.draw(epoch_rng(0, 1)))
    assert predicted.device == META
    assert "val_miou" in task.validate()
    task.close()


def test_crop_resize_takes_host_boxes_for_device_maps():
    maps = torch.zeros(1, 2, 8, 8, device=META)
    assert crop_resize(maps, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), (4, 4)).device == META


# --- the GPU forms of the selection step, checked against the CPU forms --------------------------------


@pytest.mark.parametrize("k", [1, 7, 500, 999, 1000])
def test_bisection_finds_the_same_kth_value_as_kthvalue(k):
    generator = torch.Generator().manual_seed(k)
    rows = torch.rand(3, 1000, generator=generator)
    rows[0, :600] = 0.25  # ties
    rows[1] -= 0.5  # negatives (the masked score is -1 outside refined windows)
    rows[2, ::3] = -1.0
    expected = torch.kthvalue(rows, 1000 - k + 1, dim=1, keepdim=True).values
    assert torch.equal(kth_largest_by_bisection(rows, k), expected)


def test_top_mask_by_bisection_picks_the_same_points(monkeypatch):
    from magnet_cli import refine

    score = torch.rand(2, 1, 30, 40, generator=torch.Generator().manual_seed(1)).round(decimals=1)  # many ties
    expected = top_mask(score, 300)
    monkeypatch.setattr(refine, "kth_largest", refine.kth_largest_by_bisection)
    assert torch.equal(top_mask(score, 300), expected)


@pytest.mark.parametrize("kernel", [3, 5, 9, 11])
def test_the_gpu_median_equals_the_cpu_median(kernel):
    from magnet_cli.median import _median_by_unfold

    x = torch.rand(2, 3, 33, 47, generator=torch.Generator().manual_seed(kernel))
    assert torch.equal(_median_by_unfold(x, kernel), median_blur(x, kernel))


def test_refine_with_an_allowed_mask_never_replaces_outside_it():
    from magnet_cli.refine import refine

    generator = torch.Generator().manual_seed(2)
    coarse = torch.rand(1, 3, 20, 20, generator=generator).softmax(1)
    proposal = torch.rand(1, 3, 20, 20, generator=generator).softmax(1)
    allowed = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    allowed[..., :5, :] = True  # 100 points
    out = refine(coarse, proposal, 10_000, 3, allowed=allowed)  # k beyond the allowed points
    assert torch.equal(out[..., 5:, :], coarse[..., 5:, :]) and torch.equal(out[..., :5, :], proposal[..., :5, :])
    assert torch.equal(refine(coarse, proposal, 10_000, 3, allowed=torch.zeros_like(allowed)), coarse)


# --- memory, precision and errors, through fakes of CUDA ---------------------------------------------------


def test_whole_level_maps_are_checked_against_gpu_memory_not_host_memory(monkeypatch):
    """A 16384^2 image on a big host and a small GPU: refused before any work (it used to pass on host RAM)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 16 * 2**30))
    pages = {"SC_AVPHYS_PAGES": 2**40 // 4096, "SC_PAGE_SIZE": 4096}  # a host with 1 TiB free
    monkeypatch.setattr(devices.os, "sysconf", lambda name: pages[name])
    plan = make_plan(16384, 16384, (256, 256), 4, None)
    check_level_maps_fit(plan, 7, torch.device("cpu"))
    with pytest.raises(UsageError, match="free GPU memory"):
        check_level_maps_fit(plan, 7, torch.device("cuda:0"))


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float32), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_precision_takes_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    """T4 (7.5) reports bf16 support through emulation; `auto` must not take it there."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.compute_dtype("auto", torch.device("cuda:0")) == expected
    assert devices.compute_dtype("fp32", torch.device("cuda:0")) == torch.float32
    assert devices.compute_dtype("fp16", torch.device("cuda:0")) == torch.float16


def test_fp16_on_cpu_is_a_usage_error():
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        devices.compute_dtype("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="--precision"):
        InferenceSettings(precision="fp8")


def test_cpu_auto_precision_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert devices.compute_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert devices.compute_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_a_missing_device_ordinal_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="has 1 CUDA device"):
        devices.resolve_device("cuda:7")


def _engine_that_fails(monkeypatch, error: Exception) -> None:
    def fail(self, images, stats):
        raise error

    monkeypatch.setattr(Engine, "segment_windows", fail)


def test_out_of_gpu_memory_is_one_line_with_exit_2_naming_batch_size(monkeypatch, tmp_path, bundle_dir):
    from typer.testing import CliRunner

    _engine_that_fails(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"))
    image = tmp_path / "in.png"
    import imageio.v3 as iio

    iio.imwrite(image, random_rgb(64, 64))
    result = CliRunner().invoke(app, ["segment", str(image), "-o", str(tmp_path / "o.zarr"), "--model", str(bundle_dir),
                                      "--batch-size", "8", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); try a smaller --batch-size (now 8)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA"), "CUDA error: an illegal"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"), "cuda:0: out of memory"),
])
def test_device_failures_become_device_errors(error, expected):
    with pytest.raises(DeviceError, match=expected):
        with devices.device_errors(torch.device("cuda:0"), 4):
            raise error
    with pytest.raises(ValueError):  # other errors pass through: they are bugs, with a traceback
        with devices.device_errors(torch.device("cuda:0"), 4):
            raise ValueError("x")


def test_auto_batch_size_and_readers_follow_the_device(monkeypatch):
    class Properties:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties)
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert devices.auto_batch_size(cpu) == 4 and devices.auto_batch_size(gpu) == 16
    Properties.total_memory = 8 * 2**30
    assert devices.auto_batch_size(gpu) == 8
    assert devices.auto_read_threads(cpu) == 2 and devices.auto_read_threads(gpu) >= 2
    engine = Engine(tiny_bundle(), InferenceSettings(device="cpu"))
    assert (engine.batch_size, engine.read_threads) == (4, 2)
    assert Engine(tiny_bundle(), InferenceSettings(device="cpu", batch_size=3)).batch_size == 3


def test_host_reads_meta_tensors_as_zeros_and_others_as_they_are():
    assert torch.equal(devices.host(torch.ones(2, 3, device=META)), torch.zeros(2, 3))
    values = torch.arange(4)
    assert torch.equal(devices.host(values), values) and torch.equal(devices.HostCopy(values).result(), values)


def test_bf16_and_fp32_labels_agree_on_a_small_scene(tmp_path):
    """The default bundle on a held-out synthetic scene, MagNet, CPU autocast to bf16 (emulated where the CPU
    lacks it) against fp32: >= 99% of labels agree (measured here: 99.99%)."""
    from magnet_cli.io.open import open_image
    from magnet_cli.models.default import default_model_dir
    from magnet_cli.synthetic import synth

    image = synth(tmp_path, size=512, seed=901, count=1, format="png", run=RunSettings(progress=False))[0][0]
    labels = {}
    for precision in ("fp32", "bf16"):
        engine = Engine(load_bundle(default_model_dir()), InferenceSettings(device="cpu", precision=precision))
        out = np.full((512, 512), -1, dtype=np.int64)

        def sink(region, probabilities):
            y0, x0, y1, x1 = region
            out[y0:y1, x0:x1] = probabilities.argmax(0).numpy()

        with open_image(image) as source:
            assert engine.run(source, sink).precision == precision
        labels[precision] = out
    assert (labels["fp32"] >= 0).all()
    assert (labels["fp32"] == labels["bf16"]).mean() >= 0.99


def test_precision_is_recorded_in_the_output(tmp_path, bundle_dir):
    import imageio.v3 as iio
    import zarr

    from magnet_cli.segmentation import segment
    from magnet_cli.settings import ModelSettings

    image = tmp_path / "in.png"
    iio.imwrite(image, random_rgb(64, 64))
    segment([image], tmp_path / "o.zarr", model=ModelSettings(model=str(bundle_dir)),
            inference=InferenceSettings(device="cpu", precision="bf16"), run=RunSettings(progress=False))
    attributes = dict(zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs)
    assert "bf16" in str(attributes) and Path(tmp_path / "o.zarr").is_dir()
