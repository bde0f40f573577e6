"""The training loop's guards: a checkpoint given to --resume is data to validate (shapes, finite values,
epoch range), and a run whose weights stop being finite exports nothing (issue 10, defect 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from magnet_cli.errors import UsageError
from magnet_cli.models.bundle import MODEL_FILE
from magnet_cli.settings import RunSettings, TrainingSettings
from magnet_cli.train.common import CHECKPOINT, LOG
from magnet_cli.train.fit import Task, fit


class LinearTask(Task):
    """A 2-class per-pixel linear model on random pixels: trains in milliseconds. `diverge_at` poisons
    the weights during that epoch, as an exploding lr would."""

    kind = "segmenter"
    num_classes = 2

    def __init__(self, training: TrainingSettings, width: int = 3, diverge_at: int | None = None) -> None:
        super().__init__(training)
        self.width, self.diverge_at, self.epoch = width, diverge_at, 0

    def settings(self) -> dict[str, Any]:
        return {"width": self.width, "lr": self.training.lr}

    def configure(self, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        self.model = nn.Conv2d(self.width, 2, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.training.lr, momentum=0.9)
        return self.model, self.optimizer

    def lr(self, epoch: int) -> float:
        self.epoch = epoch
        return self.training.lr

    def draw(self, rng: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(2, self.width, 4, 4), torch.randint(0, 2, (2, 4, 4))

    def step(self, batch: Any) -> tuple[float, torch.Tensor, torch.Tensor]:
        images, labels = batch
        self.optimizer.zero_grad()
        logits = self.model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        loss.backward()
        self.optimizer.step()
        if self.epoch == self.diverge_at:
            with torch.no_grad():
                self.model.weight.fill_(float("nan"))
        return float(loss.detach()), logits.detach().argmax(1), labels

    def export(self, output: Path, record: dict[str, Any]) -> None:
        (output / MODEL_FILE).write_text(json.dumps(record))


def train(output: Path, epochs: int = 2, resume: bool = False, **task: Any) -> dict:
    training = TrainingSettings(epochs=epochs, steps=2, batch_size=2, lr=0.01, device="cpu")
    return fit(LinearTask(training, **task), output, RunSettings(progress=False, resume=resume))


def tamper(output: Path, change: Any) -> None:
    checkpoint = torch.load(output / CHECKPOINT, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, output / CHECKPOINT)


def nan_weights(checkpoint: dict) -> None:
    checkpoint["model"]["weight"][0, 0] = float("nan")


def inf_momentum(checkpoint: dict) -> None:
    next(iter(checkpoint["optimizer"]["state"].values()))["momentum_buffer"].fill_(float("inf"))


def wrong_shape(checkpoint: dict) -> None:
    checkpoint["model"]["weight"] = torch.zeros(2, 5, 1, 1)


def missing_weight(checkpoint: dict) -> None:
    del checkpoint["model"]["bias"]


def not_a_tensor(checkpoint: dict) -> None:
    checkpoint["model"]["bias"] = [0.0, 0.0]


def epoch(value: Any):
    return lambda checkpoint: checkpoint.update(epoch=value)


TAMPERED = {
    "nan weights": (nan_weights, "not finite"),
    "inf optimizer state": (inf_momentum, "not finite"),
    "wrong shape": (wrong_shape, "weight"),
    "missing tensor": (missing_weight, "bias"),
    "not a tensor": (not_a_tensor, "bias"),
    "negative epoch": (epoch(-5), "epoch -5"),
    "zero epoch": (epoch(0), "epoch 0"),
    "fractional epoch": (epoch(1.5), "epoch 1.5"),
    "text epoch": (epoch("1"), "epoch '1'"),
    "epoch beyond --epochs": (epoch(9), "9 epochs"),
    "not a dict": (None, "not a training checkpoint"),
}


@pytest.mark.parametrize("case", TAMPERED, ids=list(TAMPERED))
def test_a_tampered_checkpoint_is_refused_on_resume(tmp_path, case):
    change, fragment = TAMPERED[case]
    train(tmp_path, epochs=1)
    if change is None:
        torch.save([1, 2, 3], tmp_path / CHECKPOINT)
    else:
        tamper(tmp_path, change)
    log = (tmp_path / LOG).read_text()
    with pytest.raises(UsageError) as caught:
        train(tmp_path, epochs=3, resume=True)
    message = str(caught.value)
    assert str(tmp_path / CHECKPOINT) in message and fragment in message and "\n" not in message, message
    assert (tmp_path / LOG).read_text() == log  # nothing trained on


def test_a_sound_checkpoint_still_resumes(tmp_path):
    train(tmp_path, epochs=1)
    assert [r["epoch"] for r in train(tmp_path, epochs=2, resume=True)["history"]] == [1, 2]


def test_a_diverged_run_exports_nothing_and_says_at_which_epoch(tmp_path):
    with pytest.raises(UsageError, match=r"diverged at epoch 2: .*not finite") as caught:
        train(tmp_path, epochs=3, diverge_at=2)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / MODEL_FILE).exists()
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1  # the last sound epoch is kept
    assert [json.loads(line)["epoch"] for line in (tmp_path / LOG).read_text().splitlines()] == [1]
