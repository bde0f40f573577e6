"""The one training loop both trainers run (torchgeo's BaseTask + fit, in small).

A `Task` says what is trained (model, optimiser, lr schedule, batches, one step, validation, export);
`fit` owns everything around it: the output folder, --resume and --overwrite, epochs, atomic checkpoints,
the JSON log, the progress bar and the honest training record written beside the weights.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from magnet_cli import devices
from magnet_cli.errors import OutputError, UsageError
from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.models.bundle import MODEL_FILE
from magnet_cli.models.weights import first_non_finite
from magnet_cli.settings import RunSettings, TrainingSettings
from magnet_cli.train.common import (
    CHECKPOINT,
    LOG,
    TrainProgress,
    append_log,
    command_line,
    count_parameters,
    load_checkpoint,
    plain,
    save_checkpoint,
    truncate_log,
)
from magnet_cli.train.dataset import epoch_rng

# Settings that may change on --resume: more epochs continue a run; progress changes no weight.
RESUMABLE = {"epochs"}


class Task(ABC):
    """One trainer's hooks. `fit` calls: settings, configure, then per epoch lr, draw/step, validate;
    finally scores and export."""

    kind: ClassVar[str]  # "segmenter" or "refiner": a checkpoint of one is refused by the other
    num_classes: int

    def __init__(self, training: TrainingSettings) -> None:
        self.training = training

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that shapes the weights (the training settings, the data, the model), JSON-ready:
        compared with the checkpoint's on --resume and written into the training record."""

    @abstractmethod
    def configure(self, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Build the model (seeded) and its optimiser on `device`; raise user errors here, before the
        output folder is touched."""

    def lr(self, epoch: int) -> float:
        """Learning rate of an epoch (counted from 1): a pure function, so a resumed run follows the same
        schedule as an uninterrupted one."""
        return self.training.lr

    @abstractmethod
    def draw(self, rng: Any) -> Any:
        """One batch from the epoch's generator."""

    @abstractmethod
    def step(self, batch: Any) -> tuple[float, torch.Tensor, torch.Tensor]:
        """One optimisation step: (loss, predicted class ids, labels)."""

    def validate(self) -> dict[str, Any]:
        """Validation scores after an epoch (log keys ending in _miou are shown and recorded)."""
        return {}

    def scores(self, last: dict[str, Any]) -> dict[str, Any]:
        """The final scores to record, from the last epoch's log line."""
        return {}

    @abstractmethod
    def export(self, output: Path, record: dict[str, Any]) -> None:
        """Write the bundle (weights + model.toml with `record`) into `output`."""

    def close(self) -> None:
        """Release datasets."""


def fit(task: Task, output: str | Path, run: RunSettings = RunSettings()) -> dict[str, Any]:
    """Train `task` for `task.training.epochs` epochs into `output`; return the run's summary.

    Each epoch draws `steps` batches from a generator seeded by (seed, epoch) only, then validates,
    checkpoints atomically and appends a JSON log line, so an interrupted run resumed with --resume ends
    with the weights an uninterrupted one would have. A --resume with other settings than the checkpoint's
    (more epochs excepted) is refused, so the record beside the weights always describes what made them.
    """
    training = task.training
    output = Path(output)
    started = time.perf_counter()
    device = devices.resolve_device(training.device)
    model, optimizer = task.configure(device)
    settings = json.loads(json.dumps(plain(task.settings())))  # lists, not tuples: compared on resume
    checkpoint = _prepare_output(output, run)
    done, history, commands, past_seconds = _resume(checkpoint, task, settings, output, model, optimizer)
    if done < training.epochs or not commands:
        commands = [*commands, command_line()]

    def seconds() -> float:
        return round(past_seconds + time.perf_counter() - started, 2)

    with TrainProgress(run.progress) as bar, devices.device_errors(device, training.batch_size):
        for epoch in range(done + 1, training.epochs + 1):
            lr = task.lr(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            matrix = torch.zeros(task.num_classes, task.num_classes, dtype=torch.int64)
            losses = []
            rng = epoch_rng(training.seed, epoch)
            bar.epoch(epoch, training.epochs, training.steps)
            for _ in range(training.steps):
                loss, predicted, labels = task.step(task.draw(rng))
                losses.append(loss)
                matrix += confusion(devices.host(predicted), devices.host(labels), task.num_classes, training.ignore_index)
                bar.step(loss, mean_iou(matrix))
            record = {"epoch": epoch, "loss": sum(losses) / len(losses), "train_miou": mean_iou(matrix)}
            record.update(task.validate())
            record.update({"lr": lr, "seconds": seconds()})
            _check_finite(model, epoch, output)
            bar.note(" ".join(f"{k} {v:.4g}" for k, v in record.items() if k.endswith(("loss", "miou"))))
            save_checkpoint(output / CHECKPOINT, {
                "kind": task.kind, "settings": settings, "epoch": epoch, "commands": commands,
                "seconds": record["seconds"], "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            })
            append_log(output, record)
            history.append(record)

    model.cpu().eval()
    last = history[-1] if history else {}
    scores = task.scores(last)
    summary = {"parameters": count_parameters(model), "final_loss": last.get("loss"), **scores, "seconds": seconds()}
    trained = done < training.epochs
    if trained or not (output / MODEL_FILE).is_file():  # a finished run resumed again keeps its record
        task.export(output, {"commands": commands, **settings, "epochs": training.epochs, **summary})
    task.close()
    return {"output": str(output), "epochs": training.epochs, **summary, "history": history}


def _prepare_output(output: Path, run: RunSettings) -> dict | None:
    """Create the output folder; return the checkpoint to resume from (or None). An existing training
    output is refused unless resuming or overwriting."""
    checkpoint = output / CHECKPOINT
    if run.resume:
        if not checkpoint.is_file():
            raise UsageError(f"--resume: {checkpoint} does not exist")
        return load_checkpoint(checkpoint)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not run.overwrite:
        raise OutputError(f"{output} exists and is not empty; use --resume to continue or --overwrite")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {output}: {error.strerror or error}") from None
    for name in (CHECKPOINT, LOG, MODEL_FILE):
        with contextlib.suppress(FileNotFoundError):
            (output / name).unlink()
    return None


def _resume(
    checkpoint: dict | None, task: Task, settings: dict, output: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict], list[str], float]:
    """Load a checkpoint into model and optimiser; return (epochs done, log, commands so far, seconds so far)."""
    if checkpoint is None:
        return 0, [], [], 0.0
    path = output / CHECKPOINT
    if not isinstance(checkpoint, dict):
        raise UsageError(f"--resume: {path} is not a training checkpoint (it holds a {type(checkpoint).__name__})")
    if "settings" not in checkpoint:
        raise UsageError(f"--resume: {path} was written by an older magnet-cli; start again with --overwrite")
    if checkpoint.get("kind") != task.kind:
        raise UsageError(f"--resume: {path} is a {checkpoint.get('kind')} run, not a {task.kind} run")
    differing = settings_differences(checkpoint["settings"], settings)
    if differing:
        raise UsageError(f"--resume: {path} was made with other settings: {'; '.join(differing)}")
    done = checkpoint.get("epoch")
    if not isinstance(done, int) or isinstance(done, bool) or done < 1:
        raise UsageError(f"--resume: {path} records epoch {done!r}, not an epoch count from 1: the file is damaged or edited")
    if done > task.training.epochs:
        raise UsageError(f"--resume --epochs {task.training.epochs}: {path} already holds {done} epochs")
    history = truncate_log(output, done)
    changed = [r["epoch"] for r in history if "lr" in r and abs(r["lr"] - task.lr(r["epoch"])) > 1e-12 * r["lr"]]
    if changed:
        raise UsageError(
            f"--resume --epochs {task.training.epochs}: the lr schedule would change for epoch(s) already trained "
            f"({', '.join(map(str, changed))}); give --milestones to keep the first run's schedule"
        )
    _load_checked(path, model, optimizer, checkpoint)
    return done, history, list(checkpoint.get("commands", [])), float(checkpoint.get("seconds", 0.0))


def _load_checked(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict) -> None:
    """Load a checkpoint's model and optimiser state after checking it fits: the same tensors, shapes and
    dtypes as the model being resumed, every value finite. A checkpoint is a file anyone may have edited:
    its NaNs would train on silently and ship a NaN bundle, its wrong shapes would end in a traceback."""
    state, expected = checkpoint.get("model"), model.state_dict()
    if not isinstance(state, dict):
        raise UsageError(f"--resume: {path} holds no model weights: the file is damaged or edited")
    for name in sorted(set(expected) | set(state)):
        if name not in state or name not in expected:
            where = "lacks" if name not in state else "has an unknown"
            raise UsageError(f"--resume: {path} {where} model tensor {name!r}: it is not a checkpoint of this model")
        value, wanted = state[name], expected[name]
        if not isinstance(value, torch.Tensor) or value.shape != wanted.shape or value.dtype != wanted.dtype:
            found = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise UsageError(
                f"--resume: {path}: model tensor {name!r} is {found}, the model has shape {tuple(wanted.shape)} "
                f"{wanted.dtype}: it is not a checkpoint of this model"
            )
    saved = checkpoint.get("optimizer")
    bad = first_non_finite(state) or first_non_finite(saved, "optimizer")
    if bad is not None:
        raise UsageError(f"--resume: {path}: tensor {bad!r} is not finite (NaN or inf): the run had diverged or the file is damaged")
    try:
        optimizer.load_state_dict(saved)  # type: ignore[arg-type]
    except Exception as error:  # torch raises ValueError, KeyError, TypeError for a foreign optimiser state
        raise UsageError(f"--resume: {path}: the optimiser state does not fit this run ({type(error).__name__}: {error})") from None
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for parameter in parameters:
        for key, value in optimizer.state.get(parameter, {}).items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != parameter.shape:
                raise UsageError(f"--resume: {path}: optimiser state {key!r} of shape {tuple(value.shape)} does not fit its weights")
    model.load_state_dict(state)


def _check_finite(model: nn.Module, epoch: int, output: Path) -> None:
    """Stop a diverged run before its NaN weights reach a checkpoint or a bundle."""
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        kept = f"{output / CHECKPOINT} keeps epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
        raise UsageError(
            f"training diverged at epoch {epoch}: weight {bad!r} is not finite (NaN or inf); nothing exported, "
            f"{kept}; try a lower --lr"
        )


OPTION_NAMES = {"data": "DATA", "segmenter_sha256": "the segmenter's weights (sha256)"}


def settings_differences(before: dict, now: dict) -> list[str]:
    """'--lr 0.01 (now 0.001)' for every setting that differs, epochs excepted."""
    differing = []
    for key in sorted(set(before) | set(now)):
        if key in RESUMABLE or before.get(key) == now.get(key):
            continue
        option = OPTION_NAMES.get(key, "--" + key.replace("_", "-"))
        differing.append(f"{option} {_shown(before.get(key))} (now {_shown(now.get(key))})")
    return differing


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)
