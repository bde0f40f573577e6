"""The refiner has the reference architecture and key layout, and its input order is explicit."""

import pytest
import torch

from magnet_cli.errors import ModelError
from magnet_cli.models.refiner import Refiner, load_refiner, save_refiner

# The reference RefinementMagNet(n_classes, use_bn=True) state dict keys, in its order.
REFERENCE_KEYS_PREFIXES = [
    "bn0", "conv1", "bn1", "conv2", "bn2",
    "residual.0.conv1", "residual.0.bn1", "residual.0.conv2", "residual.0.bn2", "residual.0.conv3", "residual.0.bn3",
    "residual.0.downsample.0", "residual.0.downsample.1",
    "residual.1.conv1", "residual.1.bn1", "residual.1.conv2", "residual.1.bn2", "residual.1.conv3", "residual.1.bn3",
    "seg_conv",
]


def reference_like_state(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A plain state dict with the reference's keys and random (non-default) values, BN stats included."""
    torch.manual_seed(seed)
    state = Refiner(num_classes).state_dict()
    for key, value in state.items():
        if value.dtype.is_floating_point:
            state[key] = torch.rand_like(value) * 0.5 + (0.5 if "running_var" in key else 0.0)
    return state


def test_state_dict_keys_follow_the_reference_layout():
    keys = list(Refiner(7).state_dict())
    prefixes = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))
    assert prefixes == REFERENCE_KEYS_PREFIXES
    shapes = Refiner(7).state_dict()
    assert shapes["conv1.weight"].shape == (64, 14, 3, 3)
    assert shapes["residual.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert shapes["seg_conv.weight"].shape == (7, 128, 1, 1)
    assert "seg_conv.bias" not in shapes and "conv1.bias" not in shapes


def test_reference_checkpoint_loads_and_runs_with_its_test_order(tmp_path):
    path = tmp_path / "reference_refiner.pth"
    torch.save(reference_like_state(4), path)  # the reference saves a bare state dict
    refiner = load_refiner(path)
    assert refiner.input_order == "fine_coarse" and refiner.num_classes == 4
    coarse, fine = torch.rand(2, 4, 16, 16).softmax(1), torch.rand(2, 4, 16, 16).softmax(1)
    with torch.no_grad():
        out = refiner(coarse, fine)
        # Same weights fed in the other order by hand give the same result: the order is what we say.
        swapped = load_refiner(path, input_order="coarse_fine")
        assert torch.allclose(out, swapped(fine, coarse), atol=1e-6)
        assert not torch.allclose(out, swapped(coarse, fine), atol=1e-3)
    assert out.shape == (2, 4, 16, 16)


def test_data_parallel_prefix_is_stripped(tmp_path):
    path = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in reference_like_state(3).items()}, path)
    assert load_refiner(path).num_classes == 3


def test_our_checkpoint_round_trips_its_input_order(tmp_path):
    refiner = Refiner(5, "coarse_fine")
    save_refiner(refiner, tmp_path / "r.pt")
    loaded = load_refiner(tmp_path / "r.pt")
    assert loaded.input_order == "coarse_fine"
    for key, value in refiner.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_class_count_mismatch_is_a_model_error(tmp_path):
    path = tmp_path / "r.pth"
    torch.save(reference_like_state(4), path)
    with pytest.raises(ModelError, match="4 classes but the segmenter has 6"):
        load_refiner(path, num_classes=6)


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_bad_files_are_model_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
        match = "not a readable"
    else:
        match = "no such"
    with pytest.raises(ModelError, match=match):
        load_refiner(path)


def test_foreign_state_dict_is_a_model_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="not a MagNet refiner"):
        load_refiner(path)


def test_fused_refiner_computes_the_same_function():
    from magnet_cli.models.refiner import fuse_for_inference

    refiner = Refiner(4)
    refiner.load_state_dict(reference_like_state(4, seed=3))
    refiner.eval()
    coarse, fine = torch.rand(2, 4, 20, 24).softmax(1), torch.rand(2, 4, 20, 24).softmax(1)
    with torch.no_grad():
        expected = refiner(coarse, fine)
        got = fuse_for_inference(refiner)(coarse, fine)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for n, m in fuse_for_inference(refiner).named_modules() if n != "bn0")
