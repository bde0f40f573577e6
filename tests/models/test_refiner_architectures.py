"""Refiner architectures (issue 15 item 2): one registry, each saves and loads as itself, every older
checkpoint and bundle loads as the reference, and an unknown name is a one-line error."""

from __future__ import annotations

import pytest
import torch

from magnet_cli.errors import ModelError, UsageError
from magnet_cli.models.bundle import BundleSpec, load_bundle, save_bundle
from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.refiner import ARCHITECTURES, Refiner, build_refiner, fuse_for_inference, load_refiner, save_refiner
from magnet_cli.models.refiner_names import REFINER_ARCHITECTURES
from magnet_cli.settings import RefinerTraining
from magnet_cli.synthetic import SYNTH_CLASSES

from tests.models.test_refiner import reference_like_state


def randomised(refiner: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-default weights and BatchNorm statistics, so that folding and loading are really tested."""
    torch.manual_seed(seed)
    state = refiner.state_dict()
    for key, value in state.items():
        if value.dtype.is_floating_point:
            state[key] = torch.rand_like(value) * 0.5 + (0.5 if "running_var" in key else 0.0)
    refiner.load_state_dict(state)
    return refiner.eval()


def pair(classes: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(2, classes, height, width).softmax(1), torch.rand(2, classes, height, width).softmax(1)


def test_the_registry_and_the_torch_free_names_agree():
    assert tuple(ARCHITECTURES) == tuple(REFINER_ARCHITECTURES)
    assert ARCHITECTURES["reference"] is Refiner


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_maps_any_window_to_class_logits_and_folds_exactly(architecture):
    refiner = randomised(build_refiner(architecture, 5))
    coarse, fine = pair(5, 21, 30)  # odd sizes: the half-resolution body must come back to the window
    with torch.no_grad():
        expected = refiner(coarse, fine)
        got = fuse_for_inference(refiner)(coarse, fine)
    assert expected.shape == (2, 5, 21, 30)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    folded = fuse_for_inference(refiner)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for name, m in folded.named_modules() if name != "bn0")


@pytest.mark.parametrize("architecture", [a for a in ARCHITECTURES if a != "reference"])
def test_a_lighter_refiner_is_cheaper_and_round_trips_as_itself(architecture, tmp_path):
    refiner = randomised(build_refiner(architecture, 6))
    assert sum(p.numel() for p in refiner.parameters()) < sum(p.numel() for p in Refiner(6).parameters())
    save_refiner(refiner, tmp_path / "r.pt")
    loaded = load_refiner(tmp_path / "r.pt", num_classes=6)
    assert type(loaded) is type(refiner) and loaded.architecture == architecture
    coarse, fine = pair(6, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(coarse, fine), refiner(coarse, fine))


def test_a_reference_checkpoint_still_loads_as_the_reference(tmp_path):
    torch.save(reference_like_state(4), tmp_path / "ref.pth")  # VinAI's bare state dict
    loaded = load_refiner(tmp_path / "ref.pth")
    assert type(loaded) is Refiner and loaded.architecture == "reference"


def test_weights_of_one_architecture_named_as_another_are_a_model_error(tmp_path):
    save_refiner(build_refiner("lite", 4), tmp_path / "lite.pt")
    with pytest.raises(ModelError, match="do not match the reference architecture"):
        load_refiner(tmp_path / "lite.pt", architecture="reference")


def test_an_unknown_architecture_in_a_checkpoint_is_a_model_error(tmp_path):
    refiner = build_refiner("lite", 4)
    torch.save({"state_dict": refiner.state_dict(), "num_classes": 4, "architecture": "huge"}, tmp_path / "r.pt")
    with pytest.raises(ModelError, match="'huge' is not one of reference, lite"):
        load_refiner(tmp_path / "r.pt")


def test_an_unknown_refiner_arch_to_train_is_a_usage_error():
    with pytest.raises(UsageError, match="--refiner-arch 'huge': expected one of reference, lite"):
        RefinerTraining(architecture="huge")


def bundle_with(tmp_path, refiner) -> "Path":  # noqa: F821
    torch.manual_seed(0)
    module = SmallUNet(len(SYNTH_CLASSES), widths=(8, 16)).eval()
    return save_bundle(tmp_path / "bundle", "tiny", SYNTH_CLASSES, module, "small_unet", (32, 32), refiner,
                       architecture_options={"widths": [8, 16]})


def test_a_bundle_records_its_refiner_architecture_and_builds_it(tmp_path):
    directory = bundle_with(tmp_path, build_refiner("lite", len(SYNTH_CLASSES)))
    assert 'architecture = "lite"' in (directory / "model.toml").read_text()
    assert BundleSpec.read(directory).refiner.architecture == "lite"
    assert load_bundle(directory).refiner.architecture == "lite"


def test_a_bundle_without_an_architecture_means_the_reference(tmp_path):
    directory = bundle_with(tmp_path, Refiner(len(SYNTH_CLASSES)))
    toml = directory / "model.toml"
    toml.write_text("\n".join(line for line in toml.read_text().splitlines() if not line.startswith("architecture = \"reference")))
    assert BundleSpec.read(directory).refiner.architecture is None
    assert type(load_bundle(directory).refiner) is Refiner


def test_an_unknown_architecture_in_model_toml_names_the_file(tmp_path):
    directory = bundle_with(tmp_path, Refiner(len(SYNTH_CLASSES)))
    toml = directory / "model.toml"
    toml.write_text(toml.read_text().replace('architecture = "reference"', 'architecture = "huge"'))
    with pytest.raises(ModelError, match=r"model\.toml: refiner\.architecture must be one of reference, lite, half, half-wide, got 'huge'"):
        load_bundle(directory)
