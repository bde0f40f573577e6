"""train_segmenter: loss falls, same seed same weights, checkpoints, resume and Ctrl-C."""

from __future__ import annotations

import pytest
import torch

from magnet_cli.errors import OutputError, UsageError
from magnet_cli.models.builtin import SmallUNet
from magnet_cli.models.bundle import load_bundle
from magnet_cli.train import segmenter as segmenter_module
from magnet_cli.settings import RunSettings, SegmenterTraining
from magnet_cli.train.common import CHECKPOINT, LOG, read_log
from magnet_cli.train.dataset import WindowSampler, epoch_rng, load_dataset
from magnet_cli.train.segmenter import segmenter_step, train_segmenter

from tests.train.conftest import INPUT, OPTIONS


def tiny(dataset_dir, output, resume=False, overwrite=False, **options):
    settings = dict(
        architecture_options=tuple(OPTIONS.items()), input_size=(INPUT, INPUT), epochs=2, steps=2, batch_size=2,
        seed=3, val_windows=2, device="cpu",
    )
    settings.update(options)
    return train_segmenter(
        dataset_dir, output, training=SegmenterTraining(**settings),
        run=RunSettings(progress=False, resume=resume, overwrite=overwrite),
    )


def weights(directory) -> dict[str, torch.Tensor]:
    return torch.load(directory / "segmenter.pt", weights_only=True)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_falls_on_a_repeated_batch(dataset_dir):
    dataset = load_dataset(dataset_dir)
    images, masks = WindowSampler(dataset, (INPUT, INPUT)).batch(epoch_rng(0, 1), 4)
    torch.manual_seed(0)
    model = SmallUNet(dataset.num_classes, widths=(8, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = [segmenter_step(model, optimizer, images, masks)[0] for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0]


def test_same_seed_gives_identical_weights(dataset_dir, tmp_path):
    tiny(dataset_dir, tmp_path / "a", epochs=1)
    tiny(dataset_dir, tmp_path / "b", epochs=1)
    tiny(dataset_dir, tmp_path / "c", epochs=1, seed=4)
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not same(weights(tmp_path / "a"), weights(tmp_path / "c"))


def test_resume_continues_the_epoch_count_and_the_same_trajectory(dataset_dir, tmp_path):
    straight = tiny(dataset_dir, tmp_path / "straight")
    tiny(dataset_dir, tmp_path / "resumed", epochs=1)
    resumed = tiny(dataset_dir, tmp_path / "resumed", resume=True)
    assert [r["epoch"] for r in read_log(tmp_path / "resumed")] == [1, 2]
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert resumed["history"][1]["loss"] == straight["history"][1]["loss"]
    assert same(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["epoch"] == 2


def test_ctrl_c_keeps_the_last_good_checkpoint(dataset_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_step = segmenter_module.segmenter_step

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # first step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(segmenter_module, "segmenter_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny(dataset_dir, tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert checkpoint["epoch"] == 1
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(segmenter_module, "segmenter_step", real_step)
    result = tiny(dataset_dir, tmp_path / "run", resume=True)
    assert [r["epoch"] for r in result["history"]] == [1, 2]


def test_existing_output_needs_resume_or_overwrite(dataset_dir, tmp_path):
    tiny(dataset_dir, tmp_path / "run", epochs=1, steps=1, val_windows=0)
    with pytest.raises(OutputError, match="--resume"):
        tiny(dataset_dir, tmp_path / "run", epochs=1)
    with pytest.raises(UsageError, match="does not exist"):
        tiny(dataset_dir, tmp_path / "fresh", resume=True)
    with pytest.raises(UsageError, match=r"other settings: --input-size 32,32 \(now 64,64\)"):
        tiny(dataset_dir, tmp_path / "run", resume=True, steps=1, val_windows=0, input_size=(64, 64))


def test_output_is_a_loadable_bundle_with_a_training_record(dataset_dir, tmp_path):
    result = tiny(dataset_dir, tmp_path / "run", epochs=1)
    bundle = load_bundle(tmp_path / "run")
    assert bundle.num_classes == 6 and bundle.input_size == (INPUT, INPUT) and bundle.refiner is None
    record = bundle.spec.training["segmenter"]
    assert record["seed"] == 3 and record["parameters"] == result["parameters"]
    assert (tmp_path / "run" / "segmenter.ts").is_file() and (tmp_path / "run" / LOG).is_file()
    logits = bundle.segmenter(torch.zeros(1, 3, INPUT, INPUT))
    assert logits.shape == (1, 6, INPUT, INPUT)


def test_resume_with_other_settings_names_each_of_them(dataset_dir, tmp_path):
    quick = dict(steps=1, val_windows=0)
    tiny(dataset_dir, tmp_path / "run", **quick)
    with pytest.raises(UsageError, match=r"--lr 0.001 \(now 0.01\); --seed 3 \(now 4\)"):
        tiny(dataset_dir, tmp_path / "run", resume=True, lr=0.01, seed=4, **quick)
    with pytest.raises(UsageError, match=r"--steps 1 \(now 2\)"):
        tiny(dataset_dir, tmp_path / "run", resume=True, val_windows=0)
    with pytest.raises(UsageError, match="already holds 2 epochs"):  # epochs may grow, never shrink
        tiny(dataset_dir, tmp_path / "run", resume=True, epochs=1, **quick)


def test_resuming_a_finished_run_leaves_its_record_alone(dataset_dir, tmp_path):
    tiny(dataset_dir, tmp_path / "run", epochs=1)
    before = (tmp_path / "run" / "model.toml").read_text()
    again = tiny(dataset_dir, tmp_path / "run", epochs=1, resume=True)
    assert [r["epoch"] for r in again["history"]] == [1]
    assert (tmp_path / "run" / "model.toml").read_text() == before


def test_a_resumed_run_records_both_commands(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["magnet", "train-segmenter", "first"])
    tiny(dataset_dir, tmp_path / "run", epochs=1)
    monkeypatch.setattr("sys.argv", ["magnet", "train-segmenter", "second"])
    tiny(dataset_dir, tmp_path / "run", resume=True)
    record = load_bundle(tmp_path / "run").spec.training["segmenter"]
    assert record["commands"] == ["magnet train-segmenter first", "magnet train-segmenter second"]
    assert record["epochs"] == 2 and record["steps"] == 2 and record["lr"] == 0.001


def test_architecture_options_it_cannot_take_are_a_model_error_before_training(dataset_dir, tmp_path):
    from magnet_cli.errors import ModelError

    with pytest.raises(ModelError, match="small_unet"):
        tiny(dataset_dir, tmp_path / "run", architecture_options=(("depth", 3),))
    assert not (tmp_path / "run").exists()
