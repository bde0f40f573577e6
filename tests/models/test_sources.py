"""The segmenter contract, run against every source in models/sources/ (built-in, TorchScript, torch.export,
ONNX, factory): one small model made into each, each held to the same checks; then ONNX and .pt2 end to
end through `segment`. The ONNX and .pt2 files are made by torch's own exporters, and the ONNX file is also
run directly through onnxruntime, so interop is checked with the other side's library."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from magnet_cli.cli import app
from magnet_cli.classes import default_classes
from magnet_cli.errors import ModelError
from magnet_cli.io.labels import read_labels
from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.bundle import MODEL_FILE, bundle_from_parts, load_bundle, save_bundle, write_bundle
from magnet_cli.models.refiner import Refiner
from magnet_cli.models.segmenter import LOGITS, PROBABILITIES, Segmenter
from magnet_cli.models.sources import KINDS, source_for

from tests.conftest import NUM_CLASSES, random_rgb

ort = pytest.importorskip("onnxruntime")
SIZE = 32
FACTORY_MODULE = "magnet_sources_probe"
runner = CliRunner()


def small_model() -> SmallUNet:
    torch.manual_seed(0)
    return SmallUNet(NUM_CLASSES, widths=(8, 16)).eval()


class WithSoftmax(torch.nn.Module):
    """A model that returns probabilities, as some exported models do."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x), dim=1)


def onnx_export(module: torch.nn.Module, path: Path, batch: int | None = None) -> Path:
    """torch.onnx.export, dynamic batch unless `batch` fixes it."""
    example = torch.rand(batch or 2, 3, SIZE, SIZE)
    dynamic = None if batch is not None else ({0: "batch"},)
    torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["scores"],
                      dynamic_shapes=dynamic, verbose=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The one small model as every kind of file, plus a factory module that builds it."""
    folder = tmp_path_factory.mktemp("sources")
    module = small_model()
    save_bundle(folder / "bundle", "small", default_classes(NUM_CLASSES), module, "small_unet", (SIZE, SIZE),
                Refiner(NUM_CLASSES).eval(), architecture_options={"widths": [8, 16]})
    torch.jit.script(module).save(str(folder / "small.ts"))
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(module, (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},)),
                      str(folder / "small.pt2"))
    onnx_export(module, folder / "small.onnx")
    onnx_export(module, folder / "batch1.onnx", batch=1)
    onnx_export(WithSoftmax(module).eval(), folder / "softmax.onnx")
    torch.save(module.state_dict(), folder / "small.pt")
    (folder / f"{FACTORY_MODULE}.py").write_text(
        "import torch\nfrom magnet_cli.models.builtin import SmallUNet\n"
        "def build(num_classes):\n"
        "    module = SmallUNet(num_classes, widths=(8, 16))\n"
        f"    module.load_state_dict(torch.load({str(folder / 'small.pt')!r}, weights_only=True))\n"
        "    return module\n"
    )
    return {p.name: p for p in folder.iterdir()}


@pytest.fixture
def factory_path(files, monkeypatch):
    monkeypatch.syspath_prepend(str(files["bundle"].parent))
    monkeypatch.delitem(sys.modules, FACTORY_MODULE, raising=False)


def load_source(kind: str, files: dict[str, Path]) -> Segmenter:
    """The small model through source `kind`, as a user would name it."""
    classes = default_classes(NUM_CLASSES)
    if kind == "architecture":
        return load_bundle(files["bundle"]).segmenter
    if kind == "factory":
        return bundle_from_parts(f"{FACTORY_MODULE}:build", classes, (SIZE, SIZE), None, trust_model=True).segmenter
    name = {"torchscript": "small.ts", "export": "small.pt2", "onnx": "small.onnx"}[kind]
    size = (SIZE, SIZE) if kind == "torchscript" else None  # ONNX and .pt2 files say their own size
    return bundle_from_parts(files[name], None, size, None, trust_model=True).segmenter


def windows(count: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).float().mean())


# --- the contract, once per source ------------------------------------------------------------------------
def test_the_suite_covers_every_registered_source():
    assert set(KINDS) == {"architecture", "torchscript", "export", "onnx", "factory"}


@pytest.mark.parametrize("kind", KINDS)
def test_source_states_classes_channels_size_and_output_shape(kind, files, factory_path):
    segmenter = load_source(kind, files)
    assert (segmenter.num_classes, segmenter.input_channels, tuple(segmenter.input_size)) == (NUM_CLASSES, 3, (SIZE, SIZE))
    assert segmenter.outputs == LOGITS
    assert segmenter.trainable == (kind != "onnx")
    assert segmenter.to("cpu")(windows(3)).shape == (3, NUM_CLASSES, SIZE, SIZE)


@pytest.mark.parametrize("kind", KINDS)
def test_source_agrees_with_the_pytorch_model(kind, files, factory_path):
    segmenter = load_source(kind, files).to("cpu", channels_last=True)
    images = windows(5)
    with torch.no_grad():
        expected = torch.softmax(small_model()(images), 1)
        got = segmenter.probabilities(images)
    assert agreement(got, expected) >= 0.999
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_source_digest_is_stable_across_loads(kind, files, factory_path):
    assert load_source(kind, files).digest() == load_source(kind, files).digest()


# --- ONNX: interop, fixed batch, probabilities ------------------------------------------------------------
def test_onnx_file_made_by_torch_runs_the_same_in_onnxruntime_directly(files):
    images = windows(4)
    session = ort.InferenceSession(str(files["small.onnx"]), providers=["CPUExecutionProvider"])
    direct = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    ours = load_source("onnx", files)(images)
    with torch.no_grad():
        torch_out = small_model()(images)
    assert np.allclose(direct, ours.numpy(), atol=1e-6)
    assert np.allclose(direct, torch_out.numpy(), atol=1e-4)


def test_fixed_batch_one_onnx_model_runs_one_window_at_a_time(files):
    segmenter = bundle_from_parts(files["batch1.onnx"], None, None, None).segmenter
    assert segmenter.fixed_batch == 1
    images = windows(3)
    with torch.no_grad():
        expected = small_model()(images)
    assert torch.allclose(segmenter(images), expected, atol=1e-4)


def test_a_model_returning_probabilities_is_not_softmaxed_twice(files):
    segmenter = bundle_from_parts(files["softmax.onnx"], None, None, None).segmenter
    assert segmenter.outputs == PROBABILITIES
    images = windows(2)
    with torch.no_grad():
        expected = torch.softmax(small_model()(images), 1)
    assert torch.allclose(segmenter.probabilities(images), expected, atol=1e-5)


def test_missing_onnxruntime_is_one_line_naming_the_extra(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelError, match=r"pip install 'magnet-cli\[onnx\]'") as caught:
        bundle_from_parts(files["small.onnx"], None, None, None)
    assert "\n" not in str(caught.value)


def test_onnx_input_size_must_match_the_model(files):
    with pytest.raises(ModelError, match="takes 32x32 windows, not the 64x64 given"):
        bundle_from_parts(files["small.onnx"], None, (64, 64), None)


# --- code-running sources and the registry ----------------------------------------------------------------
def test_factory_is_refused_without_trust_model(files, factory_path):
    with pytest.raises(ModelError, match="--trust-model"):
        bundle_from_parts(f"{FACTORY_MODULE}:build", default_classes(NUM_CLASSES), (SIZE, SIZE), None)
    assert FACTORY_MODULE not in sys.modules  # not even imported


def test_torch_export_archive_is_refused_without_trust_model(files):
    with pytest.raises(ModelError, match=r"small\.pt2.*--trust-model"):
        bundle_from_parts(files["small.pt2"], None, None, None)


def test_unknown_segmenter_file_kind_lists_the_known_ones():
    with pytest.raises(ModelError) as caught:
        source_for("model.h5")
    assert all(suffix in str(caught.value) for suffix in (".onnx", ".pt2", ".ts", "package.module:function"))


# --- bundles hold ONNX and .pt2 files ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["small.onnx", "small.pt2"])
def test_a_bundle_holds_an_onnx_or_pt2_segmenter_copied_into_it(files, tmp_path, name):
    made = bundle_from_parts(files[name], None, None, None, trust_model=True)
    spec = write_bundle(tmp_path / "b", made.spec, made.segmenter)  # type: ignore[arg-type]
    kind = made.spec.segmenter.kind  # type: ignore[union-attr]
    assert getattr(spec.segmenter, kind) == str(files[name])  # as named: bundle writers name files in the folder
    from dataclasses import replace

    local = replace(made.spec, segmenter=replace(made.spec.segmenter, **{kind: name}))  # type: ignore[arg-type]
    spec = write_bundle(tmp_path / "c", local, made.segmenter)
    assert (tmp_path / "c" / name).read_bytes() == files[name].read_bytes()
    loaded = load_bundle(tmp_path / "c", trust_model=True)
    assert loaded.segmenter.digest() == made.segmenter.digest() == spec.segmenter.sha256
    assert f'{kind} = "{name}"' in (tmp_path / "c" / MODEL_FILE).read_text()


# --- end to end through `segment` -------------------------------------------------------------------------
def segment(image: Path, output: Path, *model: str):
    args = ["segment", image, "-o", output, *model, "--no-progress", "--device", "cpu"]
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("name", ["small.onnx", "small.pt2", "batch1.onnx"])
def test_segment_with_an_onnx_or_pt2_segmenter_gives_the_pytorch_labels(files, tmp_path, name):
    image = tmp_path / "scene.png"
    from skimage import io as skio

    skio.imsave(image, random_rgb(120, 150), check_contrast=False)
    bundle = files["bundle"]
    # fp32 on both sides: `auto` takes bf16 for PyTorch models on a CPU with native bf16
    assert segment(image, tmp_path / "torch.zarr", "--model", bundle, "--precision", "fp32").exit_code == 0
    result = segment(image, tmp_path / "other.zarr", "--segmenter", files[name], "--refiner", bundle / "refiner.pt",
                     "--trust-model", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    expected, got = read_labels(tmp_path / "torch.zarr"), read_labels(tmp_path / "other.zarr")
    assert float((expected == got).mean()) >= 0.999


def test_the_engine_takes_a_probability_model_as_it_is(files):
    from magnet_cli.pipeline import Engine, RunStats
    from magnet_cli.settings import InferenceSettings

    bundle = bundle_from_parts(files["softmax.onnx"], None, None, None)
    engine = Engine(bundle, InferenceSettings(mode="patch", device="cpu"))
    images = windows(2)
    with torch.no_grad():
        expected = torch.softmax(small_model()(images), 1)
    assert torch.allclose(engine.segment_windows(images, RunStats()), expected, atol=1e-5)


def test_model_toml_can_say_a_segmenter_returns_probabilities(files, tmp_path):
    from dataclasses import replace

    from magnet_cli.models.bundle import BundleSpec, SegmenterSpec

    directory = tmp_path / "b"
    directory.mkdir()
    torch.jit.script(WithSoftmax(small_model()).eval()).save(str(directory / "p.ts"))
    spec = BundleSpec("p", (SIZE, SIZE), tuple(default_classes(NUM_CLASSES)), SegmenterSpec(torchscript="p.ts"))
    spec.write(directory)
    assert load_bundle(directory).segmenter.outputs == LOGITS  # TorchScript says nothing: logits, as before
    replace(spec, segmenter=replace(spec.segmenter, outputs="probabilities")).write(directory)
    segmenter = load_bundle(directory).segmenter
    assert segmenter.outputs == PROBABILITIES
    images = windows(2)
    with torch.no_grad():
        assert torch.allclose(segmenter.probabilities(images), torch.softmax(small_model()(images), 1), atol=1e-5)
    (directory / MODEL_FILE).write_text((directory / MODEL_FILE).read_text().replace('"probabilities"', '"odds"'))
    with pytest.raises(ModelError, match="segmenter.outputs must be one of logits, probabilities"):
        load_bundle(directory)


def test_inference_folds_a_builtin_segmenters_batch_norms_without_touching_the_bundle():
    module = SmallUNet(NUM_CLASSES)
    generator = torch.Generator().manual_seed(7)
    for layer in module.modules():  # trained-looking statistics, so that folding has work to do
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
            layer.weight.data.uniform_(0.5, 1.5, generator=generator)
    segmenter = Segmenter(module.eval(), NUM_CLASSES, (64, 64))
    digest = segmenter.digest()
    inference = segmenter.for_inference()
    images = torch.rand(2, 3, 64, 64, generator=generator)
    with torch.no_grad():
        assert torch.allclose(inference.probabilities(images), segmenter.probabilities(images), atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inference.module.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in segmenter.module.modules())
    assert segmenter.digest() == digest


def test_inference_leaves_a_model_it_did_not_build_as_it_is():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, NUM_CLASSES, 3, padding=1), torch.nn.BatchNorm2d(NUM_CLASSES)).eval()
    segmenter = Segmenter(module, NUM_CLASSES, (32, 32))
    assert segmenter.for_inference() is segmenter
