"""`magnet train-segmenter`: train a built-in backbone on windows of every MagNet scale level."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magnet_cli.classes import ClassInfo
from magnet_cli.errors import UsageError
from magnet_cli.models.builtin import build_architecture
from magnet_cli.models.bundle import save_bundle
from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.train.common import (
    clean,
    command_line,
    count_parameters,
    eval_mode,
    prepare_output,
    resolve_device,
    resume_from,
    run_epochs,
    seeded_init,
)
from magnet_cli.train.dataset import IGNORE_INDEX, SegmentationDataset, WindowSampler, epoch_rng, load_dataset

OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(name: str, parameters: Any, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UsageError(f"--optimizer {name}: expected one of {', '.join(OPTIMIZERS)}")


def segmenter_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[float, torch.Tensor]:
    """One optimisation step of cross-entropy (ignore index skipped); returns the loss and the logits."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    loss = F.cross_entropy(logits, masks, ignore_index=ignore_index)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), logits.detach()


def evaluate_windows(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int, ignore_index: int, device: torch.device
) -> float:
    """mIoU of the model's argmax over fixed validation windows."""
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with eval_mode(model):
        for images, masks in batches:
            predicted = model(images.to(device)).argmax(1).cpu()
            matrix += confusion(predicted, masks, num_classes, ignore_index)
    return mean_iou(matrix)


def fixed_windows(
    dataset: SegmentationDataset, input_size: tuple[int, int], count: int, batch_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `count` windows (all levels, no augmentation) every epoch, in batches."""
    sampler = WindowSampler(dataset, input_size, augment=False)
    rng = epoch_rng(seed, 0, stream=1)
    batches = []
    for start in range(0, count, batch_size):
        batches.append(sampler.batch(rng, min(batch_size, count - start)))
    return batches


def train_segmenter(
    data: str | Path | SegmentationDataset,
    output_dir: str | Path,
    *,
    architecture: str = "small_unet",
    architecture_options: dict | None = None,
    input_size: tuple[int, int] = (256, 256),
    epochs: int = 20,
    steps_per_epoch: int = 100,
    batch_size: int = 8,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    val_data: str | Path | SegmentationDataset | None = None,
    val_windows: int = 32,
    classes: list[ClassInfo] | str | None = None,
    ignore_index: int = IGNORE_INDEX,
    name: str | None = None,
    progress: bool = True,
) -> dict:
    """Train a segmenter on windows of every scale level, checkpointing each epoch; export a bundle.

    The output folder becomes a model bundle (model.toml, segmenter.pt, segmenter.ts) plus
    checkpoint.pt and train_log.jsonl (one JSON line per epoch). Same seed, same arguments, same
    device and thread count: same weights, whether or not the run was interrupted and resumed.
    """
    if epochs < 1 or steps_per_epoch < 1 or batch_size < 1:
        raise UsageError("--epochs, --steps and --batch-size must be at least 1")
    output_dir = Path(output_dir)
    started = time.perf_counter()
    dataset = load_dataset(data, classes=classes, ignore_index=ignore_index)
    validation = (
        load_dataset(val_data, classes=dataset.classes, ignore_index=ignore_index) if val_data is not None else dataset
    )
    torch_device = resolve_device(device)
    options = dict(architecture_options or {})
    config = json.loads(json.dumps({  # lists, not tuples: compared with the checkpoint's copy on resume
        "architecture": architecture,
        "architecture_options": options,
        "num_classes": dataset.num_classes,
        "input_size": list(input_size),
    }))
    model = seeded_init(seed, lambda: build_architecture(architecture, dataset.num_classes, **options)).to(torch_device)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    checkpoint = prepare_output(output_dir, resume, overwrite)
    done, history = resume_from(checkpoint, "segmenter", config, output_dir, model, opt)
    sampler = WindowSampler(dataset, input_size)
    val_batches = fixed_windows(validation, input_size, val_windows, batch_size, seed) if val_windows > 0 else []
    num_classes = dataset.num_classes

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, torch.Tensor, torch.Tensor]:
        images, masks = batch
        loss, logits = segmenter_step(model, opt, images.to(torch_device), masks.to(torch_device), ignore_index)
        return loss, logits.argmax(1), masks

    def evaluate() -> dict:
        if not val_batches:
            return {}
        val_miou = evaluate_windows(model, val_batches, num_classes, ignore_index, torch_device)
        return {"val_miou": val_miou, "val_on": "val" if val_data is not None else "train"}

    run_epochs(
        kind="segmenter", config=config, output_dir=output_dir, model=model, optimizer=opt, scheduler=None,
        seed=seed, first_epoch=done + 1, epochs=epochs, steps_per_epoch=steps_per_epoch, step=step,
        draw=lambda rng: sampler.batch(rng, batch_size), evaluate=evaluate, num_classes=num_classes,
        ignore_index=ignore_index, progress=progress, started=started, history=history,
    )

    model = model.cpu().eval()
    last = history[-1] if history else {}
    training = {
        "command": command_line(),
        "data": dataset.description,
        "val_data": validation.description if val_data is not None else None,
        "seed": seed,
        "architecture": architecture,
        "parameters": count_parameters(model),
        "input_size": list(input_size),
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "final_loss": last.get("loss"),
        "val_miou": last.get("val_miou"),
        "seconds": round(time.perf_counter() - started, 2),
    }
    save_bundle(
        output_dir,
        name or output_dir.name,
        dataset.classes,
        model,
        architecture,
        input_size,
        None,
        architecture_options=clean(options) or None,
        extra={"training": clean({"segmenter": training})},
    )
    dataset.close()
    validation.close()
    return {
        "output": str(output_dir),
        "epochs": epochs,
        "parameters": training["parameters"],
        "final_loss": training["final_loss"],
        "val_miou": training["val_miou"],
        "seconds": training["seconds"],
        "history": history,
    }
