"""What both trainers share: seeding, atomic checkpoints, the JSON log, metrics and the progress bar."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from magnet_cli.errors import OutputError, UsageError
from magnet_cli.evaluation import confusion, mean_iou

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"


def seeded_init(seed: int, build: Any) -> Any:
    """Call `build()` with torch's global generator seeded, restoring the caller's state afterwards, so
    weight initialisation depends on the seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device}: expected auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def prepare_output(output_dir: Path, resume: bool, overwrite: bool) -> dict | None:
    """Create the output folder; return the checkpoint to resume from (or None).

    An existing training output is refused unless resuming or overwriting.
    """
    checkpoint = output_dir / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise UsageError(f"--resume: {checkpoint} does not exist")
        return load_checkpoint(checkpoint)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputError(f"{output_dir} exists and is not empty; use --resume to continue or --overwrite")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {output_dir}: {error.strerror or error}") from None
    for name in (CHECKPOINT, LOG):
        with contextlib.suppress(FileNotFoundError):
            (output_dir / name).unlink()
    return None


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


def read_log(output_dir: Path) -> list[dict]:
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


def clean(value: Any) -> Any:
    """A copy fit for model.toml: None entries dropped, tuples as lists, paths as strings."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    return value


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""


# --- progress -------------------------------------------------------------------------------------------
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


# --- the epoch loop both trainers run ---------------------------------------------------------------
def resume_from(
    checkpoint: dict | None,
    kind: str,
    config: dict,
    output_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
) -> tuple[int, list[dict]]:
    """Load a checkpoint's state into the model, optimiser (and lr schedule); return (epochs done, log)."""
    if checkpoint is None:
        return 0, []
    if checkpoint.get("kind") != kind or checkpoint.get("config") != config:
        raise UsageError(
            f"--resume: {output_dir / CHECKPOINT} was made with different settings ({checkpoint.get('config')})"
        )
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    epochs_done = int(checkpoint["epoch"])
    return epochs_done, truncate_log(output_dir, epochs_done)


def run_epochs(
    *,
    kind: str,
    config: dict,
    output_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    seed: int,
    first_epoch: int,
    epochs: int,
    steps_per_epoch: int,
    step: Callable[[Any], tuple[float, torch.Tensor, torch.Tensor]],
    draw: Callable[[Any], Any],
    evaluate: Callable[[], dict],
    num_classes: int,
    ignore_index: int,
    progress: bool,
    started: float,
    history: list[dict],
) -> list[dict]:
    """Epochs first_epoch..epochs of `steps_per_epoch` steps on batches `draw(rng)`; after each epoch,
    validation, an atomic checkpoint and a JSON log line. `step(batch)` returns (loss, predicted ids,
    labels). Batches come from a generator seeded by (seed, epoch) only, so a resumed run draws what
    an uninterrupted one would have; an interrupt leaves the previous epoch's checkpoint in place."""
    from magnet_cli.train.dataset import epoch_rng

    with TrainProgress(progress) as bar:
        for epoch in range(first_epoch, epochs + 1):
            rng = epoch_rng(seed, epoch)
            matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
            losses = []
            lr = optimizer.param_groups[0]["lr"]
            bar.epoch(epoch, epochs, steps_per_epoch)
            for _ in range(steps_per_epoch):
                loss, predicted, labels = step(draw(rng))
                losses.append(loss)
                matrix += confusion(predicted.cpu(), labels.cpu(), num_classes, ignore_index)
                bar.step(loss, mean_iou(matrix))
            if scheduler is not None:
                scheduler.step()
            record = {"epoch": epoch, "loss": sum(losses) / len(losses), "train_miou": mean_iou(matrix)}
            record.update(evaluate())
            record.update({"lr": lr, "seconds": round(time.perf_counter() - started, 2)})
            bar.note(" ".join(f"{k} {v:.4g}" for k, v in record.items() if k.endswith(("loss", "miou"))))
            payload = {
                "kind": kind,
                "config": config,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                # Sampling draws from numpy Generators seeded by (seed, epoch): that is its whole state.
                "rng": {"seed": seed, "next_epoch": epoch + 1},
                "torch_rng": torch.get_rng_state(),
            }
            if scheduler is not None:
                payload["scheduler"] = scheduler.state_dict()
            save_checkpoint(output_dir / CHECKPOINT, payload)
            append_log(output_dir, record)
            history.append(record)
    return history
