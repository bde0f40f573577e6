"""Model bundles: model.toml fields that change inference, and the shipped default bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from magnet_cli.errors import ModelError
from magnet_cli.models.bundle import load_bundle, save_bundle
from magnet_cli.pipeline import InferenceSettings, plan_for

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
    training, scores = bundle.metadata["training"], bundle.metadata["evaluation"]["miou"]
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
