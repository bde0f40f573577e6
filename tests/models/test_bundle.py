"""Model bundles: the model.toml spec read and written symmetrically, fields that change inference,
segmenter/refiner pairing, and the shipped default bundle."""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from magnet_cli.classes import ClassInfo
from magnet_cli.errors import ModelError
from magnet_cli.io.pixel_size import PixelSize
from magnet_cli.models.bundle import (
    MODEL_FILE,
    BundleSpec,
    RefinerSpec,
    SegmenterSpec,
    bundle_from_parts,
    describe_bundle,
    load_bundle,
    pairing_warning,
    save_bundle,
    segmenter_digest,
)
from magnet_cli.models.refiner import Refiner, load_refiner, save_refiner
from magnet_cli.pipeline import plan_for
from magnet_cli.settings import InferenceSettings

from tests.conftest import tiny_bundle

DEFAULT = Path(__file__).resolve().parents[2] / "weights" / "default"


def saved(directory: Path, **options) -> Path:
    b = tiny_bundle()
    return save_bundle(directory, "tiny", b.classes, b.segmenter.module, "small_unet", (64, 64), b.refiner,
                       architecture_options={"widths": [8, 16]}, **options)


def test_bundle_levels_are_the_default_plan_and_the_option_overrides_them(tmp_path):
    bundle = load_bundle(saved(tmp_path / "three", levels=2))
    assert bundle.levels == 2
    assert plan_for(1024, 1024, bundle, InferenceSettings()).depth == 2
    assert plan_for(1024, 1024, bundle, InferenceSettings(levels=4)).depth == 4
    automatic = load_bundle(saved(tmp_path / "auto"))
    assert automatic.levels is None and plan_for(1024, 1024, automatic, InferenceSettings()).depth == 5


def test_bad_levels_are_a_model_error(tmp_path):
    directory = saved(tmp_path / "bad")
    toml = directory / "model.toml"
    toml.write_text(toml.read_text().replace('levels = "auto"', 'levels = "many"'))
    with pytest.raises(ModelError, match="levels must be"):
        load_bundle(directory)


def test_the_shipped_default_bundle_is_trained_and_records_how():
    bundle = load_bundle(DEFAULT)
    assert [c.name for c in bundle.classes] == ["meadow", "water", "farmland", "floodplain", "road", "building"]
    assert bundle.refiner is not None and bundle.input_size == (256, 256)
    training, scores = bundle.spec.training, bundle.spec.evaluation["miou"]
    assert training["trained"] and all(c.startswith("magnet train-") for c in training["commands"])
    assert scores["magnet"] >= max(scores["downsample"], scores["patch"]) + 0.03


def test_max_levels_caps_only_the_automatic_depth(tmp_path):
    directory = saved(tmp_path / "capped")
    toml = directory / "model.toml"
    toml.write_text(toml.read_text().replace('levels = "auto"', 'levels = "auto"\nmax_levels = 3'))
    bundle = load_bundle(directory)
    assert bundle.max_levels == 3
    assert plan_for(4096, 4096, bundle, InferenceSettings()).depth == 3  # automatic would be 7
    assert plan_for(128, 128, bundle, InferenceSettings()).depth == 2  # below the cap: unchanged
    assert plan_for(4096, 4096, bundle, InferenceSettings(levels=6)).depth == 6  # --levels wins


def every_field() -> BundleSpec:
    """A spec in which every field differs from its default."""
    return BundleSpec(
        name="full",
        input_size=(48, 64),
        classes=(ClassInfo("sea", (0, 0, 255)), ClassInfo("land mass", (0, 255, 0)), ClassInfo("ice.sheet", (255, 255, 255))),
        segmenter=SegmenterSpec(architecture="small_unet", options={"widths": [8, 16]}, weights="seg.pt",
                                torchscript_export="seg.ts", sha256="ab" * 32),
        description="every field set",
        mean=(0.4, 0.5, 0.6),
        std=(0.2, 0.25, 0.3),
        value_range=(0.0, 4095.0),
        resolution=PixelSize(0.5, 0.5, "um"),
        bands=(5, 3, 2),
        points=65536.0,
        smooth_kernel=5,
        levels=(256, 1024, 4096),
        max_levels=4,
        refiner=RefinerSpec(weights="ref.pt", input_order="fine_coarse", segmenter_sha256="cd" * 32),
        training={"segmenter": {"commands": ["magnet train-segmenter x"], "lr": 0.001, "input_size": [48, 64]}},
        evaluation={"miou": {"magnet": 0.9, "magnet-global": 0.8}, "data": "synth:1:2:64"},
    )


@pytest.mark.parametrize("reading", [{"value_range": "dtype"}, {"value_range": (0.0, 2047.0), "bands": (1,)}, {}])
def test_bands_and_value_range_round_trip(tmp_path, reading):
    spec = replace(every_field(), **{"bands": None, "value_range": None, **reading})
    spec.write(tmp_path)
    assert BundleSpec.read(tmp_path) == spec
    for key in ("bands", "value_range"):
        assert (key in (tmp_path / MODEL_FILE).read_text()) == (key in reading)


@pytest.mark.parametrize(
    "line, message",
    [("bands = [0, 1, 2]", "bands 0: expected a whole number from 1"), ('bands = "1,2,3"', "bands must be a list"),
     ('value_range = "auto"', "value_range must be")],
)
def test_bad_bands_and_value_range_name_the_key(tmp_path, line, message):
    every_field().write(tmp_path)
    path = tmp_path / MODEL_FILE
    text = "\n".join(l for l in path.read_text().splitlines() if not l.startswith(("bands", "value_range")))
    path.write_text(f"{line}\n{text}\n")
    with pytest.raises(ModelError, match=re.escape(message)):
        BundleSpec.read(tmp_path)


def test_spec_write_then_read_gives_every_field_back(tmp_path):
    spec = every_field()
    assert all(getattr(spec, f.name) != f.default for f in fields(BundleSpec) if f.name != "training")
    spec.write(tmp_path)
    assert BundleSpec.read(tmp_path) == spec
    again = tmp_path / "again"
    again.mkdir()
    BundleSpec.read(tmp_path).write(again)
    assert (again / MODEL_FILE).read_text() == (tmp_path / MODEL_FILE).read_text()


@pytest.mark.parametrize("segmenter", [SegmenterSpec(torchscript="net.ts"), SegmenterSpec(factory="pkg.mod:build", weights="w.pt")])
def test_other_segmenter_sources_round_trip(tmp_path, segmenter):
    spec = replace(every_field(), segmenter=segmenter, levels=3, refiner=None, training={}, evaluation={})
    spec.write(tmp_path)
    assert BundleSpec.read(tmp_path) == spec


def write_toml(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_text(text)
    return directory


MINIMAL = """input_size = [64, 64]
[segmenter]
architecture = "small_unet"
[[classes]]
name = "a"
[[classes]]
name = "b"
"""


def test_keys_left_out_mean_their_defaults(tmp_path):
    spec = BundleSpec.read(write_toml(tmp_path / "minimal", MINIMAL))
    assert spec.name == "minimal" and spec.points == 0.5 and spec.smooth_kernel == 11 and spec.levels is None
    assert spec.segmenter.weights == "segmenter.pt" and spec.refiner is None and spec.mean is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('architecture = "small_unet"', 'architecture = "small_unet"\nmean = [0.5, 0.5, 0.5]'),
         r"unknown key 'mean' in \[segmenter\] \(mean belongs at the top level"),
        (lambda t: "colour_space = 1\n" + t, r"unknown key 'colour_space' at the top level"),
        (lambda t: "architecture = 1\n" + t, r"unknown key 'architecture' at the top level \(architecture belongs in \[segmenter\]"),
        (lambda t: t + "shade = 1\n", r"unknown key 'shade' in \[classes\]"),
        (lambda t: t.replace("[64, 64]", '"64"'), r"input_size must be a list"),
        (lambda t: t.replace("[64, 64]", "[64, 64.5]"), r"input_size"),
        (lambda t: "points = \"many\"\n" + t, r"points must be"),
        (lambda t: "smooth_kernel = 4\n" + t, r"smooth_kernel 4: must be odd"),
        (lambda t: "smooth_kernel = 5.0\n" + t, r"smooth_kernel must be a whole number"),
        (lambda t: "max_levels = 0\n" + t, r"max_levels must be"),
        (lambda t: "levels = [512, 256]\n" + t, r"levels 512,256: level sizes must increase"),
        (lambda t: "value_range = [1, 0]\n" + t, r"value_range must be \[low, high\]"),
        (lambda t: "mean = [0.5, 0.5, 0.5]\n" + t, r"mean and std go together"),
        (lambda t: "name = 3\n" + t, r"name must be a string, got 3"),
        (lambda t: t.replace('architecture = "small_unet"', 'torchscript = "a.ts"\narchitecture = "small_unet"'),
         r"exactly one of architecture, torchscript, export, onnx, factory \(found architecture, torchscript\)"),
        (lambda t: t.replace("[segmenter]", "[refiner]\ninput_order = \"sideways\"\n[segmenter]"), r"refiner.input_order must be"),
        (lambda t: t.replace('name = "b"', 'name = "b"\ncolor = [0, 0, 300]'), r"classes.color of 'b'"),
    ],
)
def test_unknown_misplaced_and_mistyped_keys_are_model_errors_naming_key_and_file(tmp_path, edit, message):
    directory = write_toml(tmp_path / "bad", edit(MINIMAL))
    with pytest.raises(ModelError, match=message) as error:
        BundleSpec.read(directory)
    assert str(directory / MODEL_FILE) in str(error.value)


def test_digest_is_the_same_for_the_net_its_torchscript_and_on_any_copy(bundle):
    module = bundle.segmenter.module
    digest = segmenter_digest(module)
    assert segmenter_digest(torch.jit.script(module)) == digest
    changed = Refiner(3)
    assert segmenter_digest(changed) != digest
    with torch.no_grad():
        next(module.parameters()).view(-1)[0] += 1
    assert segmenter_digest(module) != digest


def test_a_refiner_beside_another_segmenter_is_warned_about(tmp_path):
    from tests.conftest import tiny_bundle

    a, b = tiny_bundle(seed=0), tiny_bundle(seed=1)
    a.refiner.segmenter_sha256 = segmenter_digest(a.segmenter.module)
    assert pairing_warning(a) is None
    save_refiner(a.refiner, tmp_path / "a_refiner.pt")
    b.refiner = load_refiner(tmp_path / "a_refiner.pt")  # a lone --refiner file carries its pairing
    assert b.refiner.segmenter_sha256 == a.refiner.segmenter_sha256
    warning = pairing_warning(b)
    assert warning is not None and "trained over another segmenter" in warning and "\n" not in warning
    b.refiner.segmenter_sha256 = None  # an older file or a reference checkpoint: nothing to compare
    assert pairing_warning(b) is None


def test_a_written_bundle_records_its_pairing(tmp_path):
    from tests.conftest import tiny_bundle

    b = tiny_bundle()
    b.refiner.segmenter_sha256 = segmenter_digest(b.segmenter.module)
    save_bundle(tmp_path, "paired", b.classes, b.segmenter.module, "small_unet", (64, 64), b.refiner,
                architecture_options={"widths": [8, 16]})
    spec = BundleSpec.read(tmp_path)
    assert spec.segmenter.sha256 == spec.refiner.segmenter_sha256 == b.refiner.segmenter_sha256
    loaded = load_bundle(tmp_path)
    assert pairing_warning(loaded) is None
    info = describe_bundle(tmp_path)
    assert info["refiner"]["paired"] is True and info["segmenter"]["sha256"] == spec.segmenter.sha256


def test_the_shipped_bundle_loads_strictly_and_its_refiner_is_paired_with_its_segmenter():
    bundle = load_bundle(DEFAULT)
    assert bundle.spec.segmenter.sha256 == segmenter_digest(bundle.segmenter.module)
    assert bundle.refiner.segmenter_sha256 == bundle.spec.segmenter.sha256
    assert pairing_warning(bundle) is None
    export = torch.jit.load(str(DEFAULT / bundle.spec.segmenter.torchscript_export))
    assert segmenter_digest(export) == bundle.spec.segmenter.sha256


def test_describe_bundle_shows_what_info_prints_and_is_json():
    info = describe_bundle(DEFAULT)
    json.dumps(info)
    assert info["name"] == "magnet-synth-default" and info["num_classes"] == 6 and info["input_size"] == [256, 256]
    assert info["input_channels"] == 3
    assert info["inference"] == {"points": 1.0, "smooth_kernel": 5, "levels": "auto", "max_levels": 5}
    assert info["segmenter"]["kind"] == "architecture" and info["segmenter"]["file"] == "segmenter.pt"
    assert info["refiner"]["paired"] is True and info["refiner"]["warning"] is None
    training = info["training"]
    assert training["segmenter"]["epochs"] == 22 and training["refiner"]["data"] == "synth:1000:24:4096"
    assert training["refiner"]["scores"]["refined_miou"] > 0.7 and len(training["commands"]) == 2
    assert info["evaluation"]["miou"]["magnet"] > 0.9


def test_bring_your_own_parts_still_make_a_bundle(tmp_path, bundle):
    torch.jit.script(bundle.segmenter.module).save(str(tmp_path / "seg.ts"))
    save_refiner(bundle.refiner, tmp_path / "ref.pt")
    made = bundle_from_parts(tmp_path / "seg.ts", None, (64, 64), tmp_path / "ref.pt", mean=(0.5,) * 3, std=(0.2,) * 3)
    assert made.num_classes == 3 and made.refiner is not None and made.segmenter.mean == (0.5,) * 3
    assert made.spec.segmenter.kind == "torchscript" and made.name == "seg"


def test_docs_name_every_key_of_the_spec():
    text = (Path(__file__).resolve().parents[2] / "docs" / "bundle.md").read_text()
    for kind in (BundleSpec, SegmenterSpec, RefinerSpec):
        for f in fields(kind):
            assert f"| `{f.name}` |" in text or f"`[{f.name}]`" in text or f"`[[{f.name}]]`" in text, f.name
