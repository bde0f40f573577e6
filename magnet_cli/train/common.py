"""Small pieces the training loop and its tasks share: seeding, checkpoint files, the JSON log, settings
records, evaluation mode and the progress bar."""

from __future__ import annotations

import contextlib
import json
import sys
from contextlib import AbstractContextManager
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from magnet_cli.errors import UsageError

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


def seeded_init(seed: int, build: Any) -> Any:
    """Call `build()` with torch's global generator seeded, restoring the caller's state afterwards, so
    weight initialisation depends on the seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically (temporary file + rename), so an interrupt never leaves a torn checkpoint."""
    from magnet_cli.io.labels import replace_file_atomically

    with replace_file_atomically(path) as temporary:
        torch.save(payload, temporary)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise UsageError(f"{path}: not a readable training checkpoint ({type(error).__name__})") from None


def append_log(output_dir: Path, record: dict) -> None:
    with (output_dir / LOG).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_log(output_dir: Path | str) -> list[dict]:
    path = Path(output_dir) / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_log(output_dir: Path, epochs: int) -> list[dict]:
    """Keep the log lines of the first `epochs` epochs (a resumed run rewrites any later ones)."""
    records = [r for r in read_log(output_dir) if r.get("epoch", 0) <= epochs]
    (output_dir / LOG).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def plain(value: Any) -> Any:
    """JSON- and TOML-ready: enums as values, tuples as lists, paths as strings, dataclasses as dicts."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def without_none(value: Any) -> Any:
    """A free-form record fit for model.toml, which has no null: unset entries left out."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value if v is not None]
    return value


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


class TrainProgress(AbstractContextManager):
    """One rich bar per epoch with the running loss and mIoU; a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        from magnet_cli.progress import progress_enabled

        self._enabled = progress_enabled(enabled)
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> "TrainProgress":
        if self._enabled:
            from rich.progress import TextColumn

            from magnet_cli.progress import new_bar

            self._bar = new_bar(TextColumn("{task.fields[status]}"))
            self._bar.start()
        return self

    def epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(f"epoch {epoch}/{epochs}", total=steps, status="")

    def step(self, loss: float, miou: float) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=1, status=f"loss {loss:.4f}  mIoU {miou:.3f}")

    def note(self, text: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, status=text)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluate with BatchNorm running statistics, then restore training mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)
