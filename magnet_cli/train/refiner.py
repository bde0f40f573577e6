"""`magnet train-refiner`: the paper's refiner recipe (DESIGN section 2) over a frozen segmenter."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magnet_cli.classes import parse_classes
from magnet_cli.devices import host
from magnet_cli.errors import ModelError, UsageError
from magnet_cli.evaluation import confusion, mean_iou
from magnet_cli.io.value_range import AUTO
from magnet_cli.models.bundle import (
    SEGMENTER_WEIGHTS,
    BundleSpec,
    ModelBundle,
    RefinerSpec,
    SegmenterSpec,
    bundle_from_parts,
    check_input_size,
    load_bundle,
    write_bundle,
)
from magnet_cli.models.refiner import RefinerNet, build_refiner
from magnet_cli.models.sources import SOURCES
from magnet_cli.models.segmenter import Segmenter
from magnet_cli.settings import ModelSettings, RefinerTraining, RunSettings
from magnet_cli.train.common import eval_mode, plain, seeded_init, without_none
from magnet_cli.train.dataset import IGNORE_INDEX, RefinerPairSampler, SegmentationDataset, epoch_rng, load_dataset
from magnet_cli.train.fit import Task, fit

PAPER_EPOCHS = 50
PAPER_MILESTONES = (20, 30, 40, 45)
OHEM_THRESHOLD = 0.7
OHEM_MIN_KEPT = 100_000


def scaled_milestones(epochs: int) -> list[int]:
    """The paper's lr decay epochs (20, 30, 40, 45 of 50) scaled to `epochs`, dropping duplicates and ends."""
    scaled = sorted({round(m * epochs / PAPER_EPOCHS) for m in PAPER_MILESTONES})
    return [m for m in scaled if 0 < m < epochs]


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    threshold: float = OHEM_THRESHOLD,
    min_kept: int = OHEM_MIN_KEPT,
) -> torch.Tensor:
    """Online hard example mining (as in the reference and HRNet): average the loss over pixels whose
    true-class probability is below `threshold`, raised so that at least `min_kept` pixels count."""
    pixel_losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    if not bool(host(valid.any())):
        return pixel_losses.sum() * 0.0
    safe = target.clone()
    safe[target == ignore_index] = 0
    probabilities = torch.softmax(logits, 1).gather(1, safe.unsqueeze(1)).flatten()[valid]
    losses = pixel_losses[valid]
    if min_kept >= losses.numel():
        return losses.mean()
    ranked, order = probabilities.detach().sort()
    cut = max(threshold, float(host(ranked[max(min_kept, 0)])))  # pixels ranked below min_kept always count
    kept = losses[order][ranked < cut]
    return kept.mean() if kept.numel() else losses.mean()


def refiner_step(
    refiner: RefinerNet,
    optimizer: torch.optim.Optimizer,
    coarse: torch.Tensor,
    fine: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    ohem: bool = False,
    ohem_threshold: float = OHEM_THRESHOLD,
    ohem_min_kept: int = OHEM_MIN_KEPT,
) -> tuple[float, torch.Tensor]:
    """One SGD step of the refiner against the fine labels; returns the loss and the logits."""
    refiner.train()
    optimizer.zero_grad(set_to_none=True)
    # channels_last: oneDNN trains the refiner's full-resolution convolutions ~1.6x faster in it on CPU.
    logits = refiner(*(t.contiguous(memory_format=torch.channels_last) for t in (coarse, fine)))
    if ohem:
        loss = ohem_cross_entropy(logits, labels, ignore_index, ohem_threshold, ohem_min_kept)
    else:
        loss = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    loss.backward()
    optimizer.step()
    return float(host(loss.detach())), logits.detach()


def frozen_model(model: ModelSettings | ModelBundle | Segmenter | None) -> tuple[ModelBundle, dict[str, Any]]:
    """The bundle whose segmenter the refiner learns to correct, with --mean/--std/--classes applied, and
    the model settings to record. A bare Segmenter becomes a bundle without a spec."""
    if model is None or isinstance(model, ModelSettings) and model.model is None and model.segmenter is None:
        raise UsageError("give exactly one of --model BUNDLE or --segmenter FILE")
    if isinstance(model, Segmenter):
        return ModelBundle("segmenter", [], model, None), {"segmenter": "<Segmenter object>"}
    if isinstance(model, ModelBundle):
        return model, {"model": str(model.path) if model.path is not None else model.name}
    if model.refiner is not None:
        raise UsageError("train-refiner trains a new refiner: --refiner does not apply")
    classes = parse_classes(model.classes) if model.classes is not None else None
    if model.model is not None:
        bundle = load_bundle(model.model, trust_model=model.trust_model)
        check_input_size(model.input_size, bundle, model.model)
    else:
        bundle = bundle_from_parts(str(model.segmenter), classes, model.input_size, None, trust_model=model.trust_model)
    if classes is not None:
        if len(classes) != bundle.num_classes:
            raise ModelError(f"--classes gives {len(classes)} classes but the segmenter has {bundle.num_classes}")
        bundle.classes = classes
    if model.mean is not None:
        bundle.segmenter.mean, bundle.segmenter.std = model.mean, model.std  # type: ignore[assignment]
    # What shaped the weights; --trust-model only permits loading, so a resume may add or drop it.
    record = {k: v for k, v in plain(model).items() if k not in ("refiner", "refiner_input_order", "trust_model")}
    return bundle, record


def output_spec(bundle: ModelBundle, name: str, classes: list, record: dict[str, Any], reading: tuple = (None, None)) -> BundleSpec:
    """The source bundle's spec with the new refiner: every inference field of the source survives, with
    the segmenter's current normalisation and classes and the `reading` (bands, value range) the refiner
    was trained with; held-out scores of the old pairing are dropped."""
    bands, value_range = reading
    segmenter = bundle.segmenter
    base = bundle.spec
    if base is None:  # a bare module travels as TorchScript, a bare ONNX graph as ONNX
        bare = SegmenterSpec(torchscript="segmenter.ts") if segmenter.trainable else SegmenterSpec(onnx="segmenter.onnx")
        base = BundleSpec(name, segmenter.input_size, tuple(classes), bare)
    source = base.segmenter
    if SOURCES[source.kind].holds_weights:  # the file is copied beside model.toml, as it must be
        source = replace(source, **{source.kind: Path(source.file).name})
    elif source.factory is not None:
        source = replace(source, weights=Path(source.weights or SEGMENTER_WEIGHTS).name)
    previous = base.training.get("segmenter")
    return replace(
        base,
        name=name,
        classes=tuple(classes),
        segmenter=source,
        mean=tuple(segmenter.mean) if segmenter.mean is not None else None,
        std=tuple(segmenter.std) if segmenter.std is not None else None,
        bands=bands,
        value_range=None if value_range == AUTO else value_range,  # auto is what a bundle without one means
        refiner=RefinerSpec(),
        training=without_none({"segmenter": previous if isinstance(previous, dict) else None, "refiner": record}),
        evaluation={},
    )


class RefinerTask(Task):
    """A refiner of the chosen architecture (input order coarse_fine) on (coarse crop, fine map, label) pairs of a frozen segmenter: SGD with
    momentum, lr x gamma at each milestone, cross-entropy or OHEM."""

    kind = "refiner"
    training: RefinerTraining

    def __init__(
        self, data: str | Path | SegmentationDataset, model: ModelSettings | ModelBundle | Segmenter | None, training: RefinerTraining
    ) -> None:
        super().__init__(training)
        self.bundle, self.model_record = frozen_model(model)
        segmenter = self.bundle.segmenter
        self.num_classes = segmenter.num_classes
        # Images are read as `segment --model OUTPUT` will read them: the options, else the source bundle's.
        self.reading = self.bundle.reading(training.bands, training.value_range)
        bands, value_range = self.reading
        self.dataset = load_dataset(data, classes=self.bundle.classes or None, ignore_index=training.ignore_index,
                                    bands=bands, value_range=value_range)
        self.dataset.channels = segmenter.input_channels
        if self.dataset.num_classes != self.num_classes:
            raise ModelError(
                f"{self.model_record.get('model') or self.model_record.get('segmenter')}: segmenter outputs "
                f"{self.num_classes} classes but the dataset has {self.dataset.num_classes}"
            )
        self.validation = (
            load_dataset(training.val, classes=self.dataset.classes, ignore_index=training.ignore_index,
                         bands=bands, value_range=value_range)
            if training.val is not None else self.dataset
        )
        self.validation.channels = segmenter.input_channels
        if training.crop is not None and training.crop > min(segmenter.input_size):
            raise UsageError(f"--crop {training.crop}: must be at most the model input size {segmenter.input_size}")
        self.segmenter_sha256 = segmenter.digest()
        self.milestones = scaled_milestones(training.epochs) if training.milestones is None else list(training.milestones)

    def settings(self) -> dict[str, Any]:
        values = plain(self.training)
        values.pop("epochs")
        values.update(
            self.model_record,
            segmenter_sha256=self.segmenter_sha256,
            data=self.dataset.description,
            val=self.validation.description if self.training.val is not None else None,
        )
        return values

    def configure(self, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
        t = self.training
        self.device = device
        segmenter = self.bundle.segmenter.to(device)
        for parameter in segmenter.module.parameters() if segmenter.trainable else ():  # type: ignore[union-attr]
            parameter.requires_grad_(False)
        refiner = seeded_init(t.seed, lambda: build_refiner(t.architecture, self.num_classes, "coarse_fine")).to(device)
        self.refiner = refiner.to(memory_format=torch.channels_last)  # type: ignore[call-arg]
        self.optimizer = torch.optim.SGD(self.refiner.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        size = segmenter.input_size
        self.sampler = RefinerPairSampler(self.dataset, size, self.probabilities, augment=t.augment, coarse_from=t.coarse_from, crop=t.crop)
        val_sampler = RefinerPairSampler(self.validation, size, self.probabilities, augment=False, coarse_from=t.coarse_from)
        rng = epoch_rng(t.seed, 0, stream=1)
        self.val_batches = [val_sampler.batch(rng, min(t.batch_size, t.val_pairs - start)) for start in range(0, t.val_pairs, t.batch_size)]
        return self.refiner, self.optimizer

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.bundle.segmenter.probabilities(images.to(self.device))

    def lr(self, epoch: int) -> float:
        """The paper's step schedule: lr x gamma at the end of each milestone epoch."""
        return self.training.lr * self.training.gamma ** sum(1 for m in self.milestones if m < epoch)

    def draw(self, rng: Any) -> tuple[torch.Tensor, ...]:
        return self.sampler.batch(rng, self.training.batch_size)

    def step(self, batch: tuple[torch.Tensor, ...]) -> tuple[float, torch.Tensor, torch.Tensor]:
        coarse, fine, labels = batch
        labels = labels.to(self.device)
        loss, logits = refiner_step(self.refiner, self.optimizer, coarse, fine, labels, self.training.ignore_index, self.training.ohem)
        return loss, logits.argmax(1), labels

    def validate(self) -> dict[str, Any]:
        scores = evaluate_pairs(self.refiner, self.val_batches, self.num_classes, self.training.ignore_index, self.device)
        return {**scores, "val_on": "val" if self.training.val is not None else "train"} if scores else {}

    def scores(self, last: dict[str, Any]) -> dict[str, Any]:
        return {k: last.get(k) for k in ("refined_miou", "coarse_miou", "fine_miou")}

    def export(self, output: Path, record: dict[str, Any]) -> None:
        record = {**record, "milestones": self.milestones}  # the schedule that ran, not "the paper's"
        refiner = self.refiner.cpu().eval()
        refiner.segmenter_sha256 = self.segmenter_sha256
        spec = output_spec(self.bundle, self.training.name or output.name, self.dataset.classes, record, self.reading)
        write_bundle(output, spec, self.bundle.segmenter, refiner)

    def close(self) -> None:
        self.dataset.close()
        self.validation.close()


def train_refiner(
    data: str | Path | SegmentationDataset,
    output: str | Path,
    *,
    model: ModelSettings | ModelBundle | Segmenter | None = None,
    training: RefinerTraining = RefinerTraining(),
    run: RunSettings = RunSettings(),
) -> dict:
    """Train a refiner over a frozen segmenter (a bundle, a TorchScript file or a module:factory); the
    output folder becomes a complete bundle that keeps every inference field of the source bundle, plus
    checkpoint.pt and train_log.jsonl.

    `coarse_from` is "parent" (pairs from adjacent levels) or "whole" (the whole-image map, as the
    reference code trains); `crop` trains on random square crops of the pairs (the refiner is fully
    convolutional with a small receptive field, so a 128 px crop teaches it the same thing as the whole
    window at a quarter of the cost); validation uses whole pairs.
    """
    return fit(RefinerTask(data, model, training), output, run)


def evaluate_pairs(
    refiner: RefinerNet,
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    num_classes: int,
    ignore_index: int,
    device: torch.device,
) -> dict:
    """mIoU of the refined map against those of the coarse map Y and the fine map O on fixed pairs."""
    if not batches:
        return {}
    matrices = {key: torch.zeros(num_classes, num_classes, dtype=torch.int64) for key in ("refined", "coarse", "fine")}
    with eval_mode(refiner):
        for coarse, fine, labels in batches:
            refined = refiner(coarse.to(device), fine.to(device))
            for key, probabilities in (("refined", refined), ("coarse", coarse), ("fine", fine)):
                matrices[key] += confusion(host(probabilities.argmax(1)), host(labels), num_classes, ignore_index)
    return {f"{key}_miou": mean_iou(matrix) for key, matrix in matrices.items()}
