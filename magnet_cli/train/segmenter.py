"""`magnet train-segmenter`: train a built-in backbone on windows of every MagNet scale level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magnet_cli.devices import host
from magnet_cli.errors import UsageError
from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.io.value_range import AUTO
from magnet_cli.models.builtin import build_architecture, check_input_size
from magnet_cli.models.bundle import SEGMENTER_EXPORT, SEGMENTER_WEIGHTS, BundleSpec, SegmenterSpec, write_bundle
from magnet_cli.models.segmenter import check_stats, module_channels, standardize
from magnet_cli.models.sources import Contract, source_for
from magnet_cli.settings import Optimizer, RunSettings, SegmenterTraining
from magnet_cli.train.common import eval_mode, plain, seeded_init, without_none
from magnet_cli.train.dataset import IGNORE_INDEX, SegmentationDataset, WindowSampler, epoch_rng, load_dataset
from magnet_cli.train.fit import Task, fit


def make_optimizer(name: Optimizer | str, parameters: Any, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if Optimizer(name) is Optimizer.sgd:
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


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
    return float(host(loss.detach())), logits.detach()


def evaluate_windows(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int, ignore_index: int, device: torch.device
) -> float:
    """mIoU of the model's argmax over fixed validation windows."""
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with eval_mode(model):
        for images, masks in batches:
            predicted = host(model(images.to(device)).argmax(1))
            matrix += confusion(predicted, masks, num_classes, ignore_index)
    return mean_iou(matrix)


def fixed_windows(
    dataset: SegmentationDataset, input_size: tuple[int, int], count: int, batch_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `count` windows (all levels, no augmentation) every epoch, in batches."""
    sampler = WindowSampler(dataset, input_size, augment=False)
    rng = epoch_rng(seed, 0, stream=1)
    return [sampler.batch(rng, min(batch_size, count - start)) for start in range(0, count, batch_size)]


def build_segmenter(training: SegmenterTraining, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """The module to train: the --segmenter factory's (Python code: only with --trust-model), else the
    built-in architecture; weights initialised from the seed alone."""
    if training.segmenter is None:
        return seeded_init(training.seed, lambda: build_architecture(training.architecture, num_classes, **options))
    source = source_for(training.segmenter)
    if source.kind != "factory":
        raise UsageError(
            f"--segmenter {training.segmenter}: train-segmenter trains a torch module from package.module:factory; "
            f"a {source.description} file is trained elsewhere (train-refiner trains a refiner over it)"
        )
    spec = SegmenterSpec(factory=training.segmenter)
    contract = Contract(num_classes, training.input_size, training.mean, training.std)
    return seeded_init(training.seed, lambda: source.load(spec, None, contract, trust_model=training.trust_model).module)


class SegmenterTask(Task):
    """A built-in architecture on windows of every scale level, cross-entropy, AdamW or SGD."""

    kind = "segmenter"
    training: SegmenterTraining

    def __init__(self, data: str | Path | SegmentationDataset, training: SegmenterTraining) -> None:
        super().__init__(training)
        reading = {"bands": training.bands, "value_range": training.value_range}  # as `segment` will read
        self.dataset = load_dataset(data, classes=training.classes, ignore_index=training.ignore_index, **reading)
        self.validation = (
            load_dataset(training.val, classes=self.dataset.classes, ignore_index=training.ignore_index, **reading)
            if training.val is not None else self.dataset
        )
        self.num_classes = self.dataset.num_classes
        self.options = dict(training.architecture_options)
        if training.segmenter is None and "in_channels" not in self.options:
            channels = self.dataset.data_channels()  # N-band data trains an N-channel net
            if channels != 3:  # 3 is the architecture's default: bundles of RGB models stay as they were
                self.options["in_channels"] = channels

    def settings(self) -> dict[str, Any]:
        values = plain(self.training)
        values.update(
            data=self.dataset.description,
            val=self.validation.description if self.training.val is not None else None,
            architecture_options=plain(self.options),
            classes=[c.name for c in self.dataset.classes],
        )
        values.pop("epochs")
        values.pop("trust_model")  # it permits loading a factory; it shapes nothing
        if self.training.segmenter is not None:  # the factory replaces the architecture
            values.pop("architecture")
            values.pop("architecture_options")
        return values

    def configure(self, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        t = self.training
        self.device = device
        self.model = build_segmenter(t, self.num_classes, self.options).to(device)
        check_input_size(self.model, t.input_size, self.num_classes)
        channels = getattr(self.model, "in_channels", None) or module_channels(self.model) or 3
        check_stats(t.mean, t.std, channels)
        for data in (self.dataset, self.validation):
            data.channels = channels  # read as `segment` reads for this model
        self.optimizer = make_optimizer(t.optimizer, self.model.parameters(), t.lr, t.weight_decay)
        self.sampler = WindowSampler(self.dataset, t.input_size)
        self.val_batches = [
            (standardize(images, t.mean, t.std), masks)
            for images, masks in fixed_windows(self.validation, t.input_size, t.val_windows, t.batch_size, t.seed)
        ]
        return self.model, self.optimizer

    def draw(self, rng: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler.batch(rng, self.training.batch_size)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, torch.Tensor, torch.Tensor]:
        images, masks = batch
        images = standardize(images.to(self.device), self.training.mean, self.training.std)
        loss, logits = segmenter_step(self.model, self.optimizer, images, masks.to(self.device), self.training.ignore_index)
        return loss, logits.argmax(1), masks

    def validate(self) -> dict[str, Any]:
        if not self.val_batches:
            return {}
        miou = evaluate_windows(self.model, self.val_batches, self.num_classes, self.training.ignore_index, self.device)
        return {"val_miou": miou, "val_on": "val" if self.training.val is not None else "train"}

    def scores(self, last: dict[str, Any]) -> dict[str, Any]:
        return {"val_miou": last.get("val_miou")}

    def export(self, output: Path, record: dict[str, Any]) -> None:
        t = self.training
        if t.segmenter is not None:
            source = SegmenterSpec(factory=t.segmenter, weights=SEGMENTER_WEIGHTS)
        else:
            source = SegmenterSpec(
                architecture=t.architecture, options=plain(self.options), weights=SEGMENTER_WEIGHTS,
                torchscript_export=SEGMENTER_EXPORT,
            )
        spec = BundleSpec(
            name=t.name or output.name,
            input_size=t.input_size,
            classes=tuple(self.dataset.classes),
            segmenter=source,
            mean=t.mean,
            std=t.std,
            bands=t.bands,
            value_range=None if t.value_range == AUTO else t.value_range,  # auto: what a bundle without one means
            training={"segmenter": without_none(record)},
        )
        write_bundle(output, spec, self.model)

    def close(self) -> None:
        self.dataset.close()
        self.validation.close()


def train_segmenter(
    data: str | Path | SegmentationDataset,
    output: str | Path,
    *,
    training: SegmenterTraining = SegmenterTraining(),
    run: RunSettings = RunSettings(),
) -> dict:
    """Train a segmenter on windows of every scale level, checkpointing each epoch; export a bundle.

    The output folder becomes a model bundle (model.toml, segmenter.pt, segmenter.ts) plus
    checkpoint.pt and train_log.jsonl (one JSON line per epoch). Same seed, same settings, same
    device and thread count: same weights, whether or not the run was interrupted and resumed.
    """
    return fit(SegmenterTask(data, training), output, run)
