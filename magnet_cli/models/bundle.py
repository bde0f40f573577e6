"""Model bundles (DESIGN section 5): a folder with model.toml, segmenter weights and refiner weights."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from magnet_cli.classes import ClassInfo, classes_from_records, classes_to_records, default_classes
from magnet_cli.errors import ModelError
from magnet_cli.models.builtin import build_architecture
from magnet_cli.models.refiner import Refiner, load_refiner, save_refiner
from magnet_cli.models.segmenter import Segmenter, load_factory, load_torchscript
from magnet_cli.toml_writer import dumps

MODEL_FILE = "model.toml"


@dataclass
class ModelBundle:
    """Everything `segment` needs from a model: segmenter, refiner, classes and inference defaults."""

    name: str
    classes: list[ClassInfo]
    segmenter: Segmenter
    refiner: Refiner | None
    points: float = 0.5  # count (> 1) or fraction of each level's pixels
    smooth_kernel: int = 11
    value_range: tuple[float, float] | None = None
    levels: int | list[int] | None = None  # default scale levels (as --levels); None: automatic
    # Automatic levels stop at this many: the coarsest level then shows the model no coarser a view
    # than it was trained on, however large the image. None: no cap.
    max_levels: int | None = None
    path: Path | None = None
    metadata: dict = field(default_factory=dict)  # the rest of model.toml (training commands, scores)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.segmenter.input_size


def load_bundle(directory: Path | str) -> ModelBundle:
    """Read a bundle folder; every problem is a ModelError naming the file."""
    directory = Path(directory)
    toml_path = directory / MODEL_FILE
    if not toml_path.is_file():
        raise ModelError(f"{directory}: not a model bundle (no {MODEL_FILE})")
    try:
        spec = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{toml_path}: invalid TOML ({error})") from None
    try:
        classes = classes_from_records(spec["classes"])
        input_size = tuple(int(v) for v in spec["input_size"])
        seg_spec = spec["segmenter"]
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{toml_path}: missing or malformed entry {error}") from None
    if len(input_size) != 2:
        raise ModelError(f"{toml_path}: input_size must be [height, width]")
    module = _load_segmenter_module(directory, seg_spec, len(classes), toml_path)
    mean, std = spec.get("mean"), spec.get("std")
    segmenter = Segmenter(
        module, len(classes), input_size, tuple(mean) if mean else None, tuple(std) if std else None  # type: ignore[arg-type]
    )
    refiner = None
    if "refiner" in spec:
        ref_spec = spec["refiner"]
        refiner = load_refiner(directory / ref_spec.get("weights", "refiner.pt"), ref_spec.get("input_order"), len(classes))
    value_range = spec.get("value_range")
    return ModelBundle(
        name=str(spec.get("name", directory.name)),
        classes=classes,
        segmenter=segmenter,
        refiner=refiner,
        points=float(spec.get("points", 0.5)),
        smooth_kernel=int(spec.get("smooth_kernel", 11)),
        value_range=tuple(value_range) if value_range else None,  # type: ignore[arg-type]
        levels=_levels(spec.get("levels", "auto"), toml_path),
        max_levels=_max_levels(spec.get("max_levels"), toml_path),
        path=directory,
        metadata={k: v for k, v in spec.items() if k in ("training", "evaluation", "description")},
    )


def _levels(value: object, toml_path: Path) -> int | list[int] | None:
    """model.toml `levels`: "auto", a level count, or each level's long side in pixels."""
    if value == "auto":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 1 for v in value):
        return list(value)
    raise ModelError(f"{toml_path}: levels must be \"auto\", a level count or a list of sizes, got {value!r}")


def _max_levels(value: object, toml_path: Path) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ModelError(f"{toml_path}: max_levels must be a positive level count, got {value!r}")


def _load_segmenter_module(directory: Path, seg_spec: dict, num_classes: int, toml_path: Path) -> torch.nn.Module:
    if "torchscript" in seg_spec:
        return load_torchscript(directory / seg_spec["torchscript"])
    if "factory" in seg_spec:
        module = load_factory(seg_spec["factory"], num_classes)
    elif "architecture" in seg_spec:
        module = build_architecture(seg_spec["architecture"], num_classes, **seg_spec.get("options", {}))
    else:
        raise ModelError(f"{toml_path}: [segmenter] needs 'architecture', 'torchscript' or 'factory'")
    weights = directory / seg_spec.get("weights", "segmenter.pt")
    if not weights.is_file():
        raise ModelError(f"{weights}: no such segmenter weights file")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except Exception as error:
        raise ModelError(f"{weights}: cannot load segmenter weights ({str(error).splitlines()[0]})") from None
    return module.eval()


def save_bundle(
    directory: Path | str,
    name: str,
    classes: list[ClassInfo],
    segmenter_module: torch.nn.Module,
    architecture: str,
    input_size: tuple[int, int],
    refiner: Refiner | None,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    points: float = 0.5,
    smooth_kernel: int = 11,
    levels: int | list[int] | str = "auto",
    architecture_options: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a bundle: model.toml, segmenter.pt (state dict), segmenter.ts (TorchScript), refiner.pt."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(segmenter_module.state_dict(), directory / "segmenter.pt")
    scripted = torch.jit.script(segmenter_module.eval())
    scripted.save(str(directory / "segmenter.ts"))
    document: dict = {
        "name": name,
        "input_size": list(input_size),
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "points": points,
        "smooth_kernel": smooth_kernel,
        "levels": levels,
        "segmenter": {
            "architecture": architecture,
            "options": architecture_options or None,
            "weights": "segmenter.pt",
            "torchscript_export": "segmenter.ts",
        },
    }
    if refiner is not None:
        save_refiner(refiner, directory / "refiner.pt")
        document["refiner"] = {"weights": "refiner.pt", "input_order": refiner.input_order}
    document.update(extra or {})
    document["classes"] = classes_to_records(classes)
    (directory / MODEL_FILE).write_text(dumps(document), encoding="utf-8")
    return directory


def bundle_from_parts(
    segmenter_path: Path | str,
    classes: list[ClassInfo] | None,
    input_size: tuple[int, int],
    refiner_path: Path | str | None,
    *,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    refiner_input_order: str | None = None,
) -> ModelBundle:
    """A bundle for bring-your-own models: a TorchScript file (or module:factory) plus an optional refiner."""
    from magnet_cli.models.segmenter import infer_num_classes

    spec = str(segmenter_path)
    if ":" in spec and not Path(spec).exists() and not spec[1:3] == ":\\":
        if classes is None:
            raise ModelError(f"segmenter factory {spec!r} needs --classes (it is called with the class count)")
        module = load_factory(spec, len(classes))
    else:
        module = load_torchscript(segmenter_path)
    num_classes = infer_num_classes(module, input_size)
    if classes is None:
        classes = default_classes(num_classes)
    if len(classes) != num_classes:
        raise ModelError(f"{segmenter_path}: segmenter outputs {num_classes} classes but --classes gives {len(classes)}")
    refiner = (
        load_refiner(refiner_path, refiner_input_order, num_classes) if refiner_path is not None else None  # type: ignore[arg-type]
    )
    segmenter = Segmenter(module, num_classes, input_size, mean, std)
    return ModelBundle(name=Path(spec).stem, classes=classes, segmenter=segmenter, refiner=refiner)
