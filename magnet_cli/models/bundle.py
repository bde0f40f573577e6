"""Model bundles (DESIGN section 5): a folder with model.toml, segmenter weights and refiner weights.

`BundleSpec` *is* model.toml: `BundleSpec.read(folder)` and `spec.write(folder)` are exact inverses, and
every writer (both trainers, tools/finish_bundle.py) goes through it, so a field cannot be dropped by one
writer or ignored by one reader. docs/bundle.md documents every key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from torch import nn

from magnet_cli.classes import ClassInfo, default_classes
from magnet_cli.errors import ModelError, UsageError
from magnet_cli.io.pixel_size import PixelSize
from magnet_cli.models.refiner import INPUT_ORDERS, RefinerNet, load_refiner, save_refiner
from magnet_cli.models.refiner_names import REFINER_ARCHITECTURES
from magnet_cli.models.segmenter import OUTPUTS, Segmenter
from magnet_cli.models.sources import KINDS, SOURCES, Contract, bands_channels, source_for
from magnet_cli.models.weights import first_non_finite, read_state, segmenter_digest, state_digest
from magnet_cli.settings import (
    MAX_LEVELS,
    check_bands,
    check_channel_stats,
    check_levels,
    check_points,
    check_resolution,
    check_size,
    check_smooth_kernel,
)
from magnet_cli.toml_writer import dumps

MODEL_FILE = "model.toml"
DTYPE = "dtype"  # value_range = "dtype": the sample type's range (uint8 0..255, uint16 0..65535, float 0..1)
SEGMENTER_WEIGHTS = "segmenter.pt"
SEGMENTER_EXPORT = "segmenter.ts"
REFINER_WEIGHTS = "refiner.pt"
SEGMENTER_KINDS = KINDS  # one per module of models/sources/


# --- the spec -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmenterSpec:
    """[segmenter]: exactly one source (models/sources/: a built-in architecture, a TorchScript file, a
    torch.export archive, an ONNX file or a module:factory)."""

    architecture: str | None = None
    torchscript: str | None = None  # file, relative to the bundle folder (deprecated upstream)
    export: str | None = None  # a torch.export archive (.pt2), relative to the bundle folder
    onnx: str | None = None  # an ONNX file, relative to the bundle folder
    factory: str | None = None  # "package.module:function", called with the class count
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the architecture
    weights: str | None = None  # state dict of an architecture or factory module
    torchscript_export: str | None = None  # a TorchScript copy for other tools; never read by us
    outputs: str | None = None  # "logits" or "probabilities"; None: what the model says (ONNX, .pt2) or logits
    sha256: str | None = None  # content digest of the weights (`segmenter_digest`, or the file's for ONNX / .pt2)

    @property
    def kind(self) -> str:
        return next(k for k in SEGMENTER_KINDS if getattr(self, k) is not None)

    @property
    def file(self) -> str:
        """The file the segmenter is loaded from."""
        if SOURCES[self.kind].holds_weights:
            return getattr(self, self.kind)
        return self.weights or SEGMENTER_WEIGHTS


@dataclass(frozen=True)
class RefinerSpec:
    """[refiner]: the refiner's weights and what it was trained with."""

    weights: str = REFINER_WEIGHTS
    input_order: str | None = None  # None: the checkpoint's own, else the reference's fine_coarse
    segmenter_sha256: str | None = None  # digest of the segmenter the refiner was trained over
    architecture: str | None = None  # models/refiner_names.py; None: the reference (every older bundle)


@dataclass(frozen=True)
class BundleSpec:
    """model.toml, typed. Defaults are what a key left out means."""

    name: str
    input_size: tuple[int, int]
    classes: tuple[ClassInfo, ...]
    segmenter: SegmenterSpec
    description: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    value_range: tuple[float, float] | str | None = None  # [low, high] or "dtype"; None: auto (io/value_range.py)
    bands: tuple[int, ...] | None = None  # the image bands the model sees, counted from 1 (as --bands)
    resolution: PixelSize | None = None  # the pixel size the model was trained at ("0.5um", "1m")
    points: float = 0.5
    smooth_kernel: int = 11
    levels: int | tuple[int, ...] | None = None  # None: "auto"
    max_levels: int | None = None
    refiner: RefinerSpec | None = None
    training: dict[str, Any] = field(default_factory=dict)  # free-form record of how the weights were made
    evaluation: dict[str, Any] = field(default_factory=dict)  # free-form record of held-out scores

    @classmethod
    def read(cls, directory: Path | str) -> "BundleSpec":
        """model.toml of a bundle folder; every problem is a ModelError naming the file and the key."""
        directory = Path(directory)
        path = directory / MODEL_FILE
        if not path.is_file():
            raise ModelError(f"{directory}: not a model bundle (no {MODEL_FILE})")
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ModelError(f"{path}: invalid TOML ({error})") from None
        return cls.from_document(document, path, default_name=directory.name)

    def write(self, directory: Path | str) -> Path:
        """Write model.toml into `directory` (atomically: a reader never sees half a file)."""
        from magnet_cli.io.labels import replace_file_atomically

        path = Path(directory) / MODEL_FILE
        with replace_file_atomically(path) as temporary:
            temporary.write_text(dumps(self.to_document()), encoding="utf-8")
        return path

    def to_document(self) -> dict[str, Any]:
        """The TOML document (None and empty tables left out: both read back as the default)."""
        document: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "input_size": list(self.input_size),
            "mean": _list(self.mean),
            "std": _list(self.std),
            "value_range": self.value_range if isinstance(self.value_range, str) else _list(self.value_range),
            "bands": _list(self.bands),
            "resolution": self.resolution.text() if self.resolution is not None else None,
            "points": self.points,
            "smooth_kernel": self.smooth_kernel,
            "levels": "auto" if self.levels is None else _list(self.levels) if isinstance(self.levels, tuple) else self.levels,
            "max_levels": self.max_levels,
            "segmenter": _table(self.segmenter),
            "refiner": _table(self.refiner) if self.refiner is not None else None,
            "training": self.training or None,
            "evaluation": self.evaluation or None,
            "classes": [{"name": c.name, "color": list(c.color)} for c in self.classes],
        }
        return {k: v for k, v in document.items() if v is not None}

    @classmethod
    def from_document(cls, document: dict[str, Any], path: Path | str, default_name: str = "model") -> "BundleSpec":
        """The spec of a parsed model.toml; `path` names the file in errors."""
        check = _Checker(Path(path))
        check.keys(document, {f.name for f in fields(cls)}, None)
        segmenter = check.segmenter(check.table(document, "segmenter", required=True))
        refiner_table = check.table(document, "refiner", required=False)
        return cls(
            name=check.text(document, "name", default=default_name),
            description=check.text(document, "description", default=None),
            input_size=check.settled("input_size", lambda: _size(check.typed(document, "input_size", list, required=True))),
            classes=check.classes(document.get("classes")),
            segmenter=segmenter,
            mean=check.stats(document, "mean"),
            std=check.stats(document, "std"),
            value_range=check.value_range(document.get("value_range")),
            resolution=check.settled("resolution", lambda: _resolution(check.text(document, "resolution", None))),
            bands=check.bands(document.get("bands")),
            points=check.settled("points", lambda: float(check_points(check.number(document, "points", 0.5), "points"))),
            smooth_kernel=check.settled(
                "smooth_kernel", lambda: check_smooth_kernel(check.typed(document, "smooth_kernel", int, 11), "smooth_kernel")
            ),
            levels=check.levels(document.get("levels", "auto")),
            max_levels=check.max_levels(document.get("max_levels")),
            refiner=check.refiner(refiner_table) if refiner_table is not None else None,
            training=check.table(document, "training", required=False) or {},
            evaluation=check.table(document, "evaluation", required=False) or {},
        )._validated(Path(path))

    def files(self) -> dict[str, str]:
        """Every file model.toml names, by key (`segmenter.weights`: "segmenter.pt")."""
        keys = [kind for kind, source in SOURCES.items() if source.holds_weights] + ["weights", "torchscript_export"]
        named = {f"segmenter.{key}": getattr(self.segmenter, key) for key in keys}
        if self.refiner is not None:
            named["refiner.weights"] = self.refiner.weights
        return {key: value for key, value in named.items() if value is not None}

    def _validated(self, path: Path) -> "BundleSpec":
        """Checks across keys, and that every file named lies inside the bundle folder: model files are
        data, and a downloaded model.toml must not make us open `/etc/shadow` or `../../x`."""
        try:
            check_channel_stats(self.mean, self.std)
        except UsageError as error:
            raise ModelError(f"{path}: {str(error).replace('--', '')}") from None
        for key, name in self.files().items():
            if not _inside(path.parent, name):
                raise ModelError(f"{path}: {key} {name!r} is outside the bundle folder (a bundle names only its own files)")
        return self


def _inside(directory: Path, name: str) -> bool:
    """Whether `name` (relative to `directory`) stays inside it, `..` and symbolic links resolved."""
    if not name or Path(name).is_absolute():
        return False
    root = directory.resolve()
    return (root / name).resolve().is_relative_to(root)


def _list(values: Any) -> list | None:
    return list(values) if values is not None else None


def _table(spec: Any) -> dict[str, Any]:
    """A nested spec as a TOML table, unset (None) and empty entries left out."""
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    return {k: v for k, v in values.items() if v is not None and v != {}}


def _resolution(text: str | None) -> PixelSize | None:
    value = check_resolution(text, "resolution")
    if value is not None and not isinstance(value, PixelSize):
        raise UsageError(f"resolution {text!r}: a bundle records the pixel size it was trained at, such as 0.5um or 1m")
    return value


def _size(value: list) -> tuple[int, int]:
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise UsageError(f"input_size {value!r}: expected [height, width] in whole pixels")
    return check_size(value, "input_size")  # type: ignore[return-value]


class _Checker:
    """Typed reads of one model.toml: each failure is a ModelError naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str) -> ModelError:
        return ModelError(f"{self.path}: {message}")

    def keys(self, table: dict, known: set[str], section: str | None) -> None:
        for key in table:
            if key not in known:
                where = f"in [{section}]" if section else "at the top level"
                hint = ""
                if section and key in _TOP_LEVEL:
                    hint = f" ({key} belongs at the top level, above [{section}])"
                elif section is None and key in _SEGMENTER_KEYS:
                    hint = f" ({key} belongs in [segmenter])"
                raise self.fail(f"unknown key {key!r} {where}{hint}")

    def settled(self, key: str, read: Any) -> Any:
        """Run a settings check, its UsageError becoming this file's ModelError."""
        try:
            return read()
        except UsageError as error:
            raise self.fail(str(error)) from None

    def typed(self, table: dict, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False,
              section: str | None = None) -> Any:
        name = f"{section}.{key}" if section else key
        if key not in table:
            if required:
                raise self.fail(f"missing key {name!r}")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"{name} must be {_article(expected)}, got {value!r}")
        return value

    def text(self, table: dict, key: str, default: str | None, section: str | None = None) -> str | None:
        return self.typed(table, key, str, default, section=section)

    def number(self, table: dict, key: str, default: float) -> float:
        return self.typed(table, key, (int, float), default)

    def table(self, document: dict, key: str, *, required: bool) -> dict | None:
        return self.typed(document, key, dict, None, required=required)

    def stats(self, document: dict, key: str) -> tuple[float, ...] | None:
        values = self.typed(document, key, list, None)
        if values is None:
            return None
        if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise self.fail(f"{key} must be a list of numbers, one per channel, got {values!r}")
        return tuple(float(v) for v in values)

    def value_range(self, value: Any) -> tuple[float, float] | str | None:
        if value is None:
            return None
        if value == DTYPE:
            return value
        if (
            not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not value[0] < value[1]
        ):
            raise self.fail(f'value_range must be [low, high] with low < high, or "{DTYPE}", got {value!r}')
        return float(value[0]), float(value[1])

    def bands(self, value: Any) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.fail(f"bands must be a list of band numbers counted from 1, got {value!r}")
        return self.settled("bands", lambda: check_bands(value, "bands"))

    def levels(self, value: Any) -> int | tuple[int, ...] | None:
        """"auto", a level count, or each level's long side in pixels."""
        if value == "auto":
            return None
        if isinstance(value, (int, list)) and not isinstance(value, bool):
            return self.settled("levels", lambda: check_levels(value, "levels"))
        raise self.fail(f'levels must be "auto", a level count or a list of sizes, got {value!r}')

    def max_levels(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_LEVELS:
            return value
        raise self.fail(f"max_levels must be a level count from 1 to {MAX_LEVELS}, got {value!r}")

    def classes(self, value: Any) -> tuple[ClassInfo, ...]:
        if value is None:
            raise self.fail("missing [[classes]] (one entry per class, each with a name and a color)")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value) or len(value) < 2:
            raise self.fail(f"[[classes]] must list at least 2 classes, got {value!r}")
        fallback = default_classes(len(value))
        classes = []
        for index, entry in enumerate(value):
            self.keys(entry, {"name", "color"}, "classes")
            name = self.typed(entry, "name", str, required=True, section="classes")
            color = self.typed(entry, "color", list, list(fallback[index].color), section="classes")
            if len(color) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color):
                raise self.fail(f"classes.color of {name!r} must be [r, g, b] from 0 to 255, got {color!r}")
            classes.append(ClassInfo(name, tuple(color)))  # type: ignore[arg-type]
        return tuple(classes)

    def segmenter(self, table: dict) -> SegmenterSpec:
        self.keys(table, {f.name for f in fields(SegmenterSpec)}, "segmenter")
        values = {key: self.text(table, key, None, "segmenter") for key in _SEGMENTER_TEXT}
        sources = [k for k in SEGMENTER_KINDS if values[k] is not None]
        if len(sources) != 1:
            found = ", ".join(sources) or "none"
            raise self.fail(f"[segmenter] needs exactly one of {', '.join(SEGMENTER_KINDS)} (found {found})")
        options = self.typed(table, "options", dict, {}, section="segmenter")
        kind = sources[0]
        if SOURCES[kind].holds_weights:
            for key in ("weights", "torchscript_export"):
                if values[key] is not None:
                    raise self.fail(f"segmenter.{key} does not go with segmenter.{kind} (the file holds the weights)")
        else:
            values["weights"] = values["weights"] or SEGMENTER_WEIGHTS
        if options and values["architecture"] is None:
            raise self.fail("segmenter.options go with segmenter.architecture only")
        if values["outputs"] is not None and values["outputs"] not in OUTPUTS:
            raise self.fail(f"segmenter.outputs must be one of {', '.join(OUTPUTS)}, got {values['outputs']!r}")
        return SegmenterSpec(options=options, **values)

    def refiner(self, table: dict) -> RefinerSpec:
        self.keys(table, {f.name for f in fields(RefinerSpec)}, "refiner")
        order = self.text(table, "input_order", None, "refiner")
        if order is not None and order not in INPUT_ORDERS:
            raise self.fail(f"refiner.input_order must be one of {', '.join(INPUT_ORDERS)}, got {order!r}")
        return RefinerSpec(
            weights=self.text(table, "weights", REFINER_WEIGHTS, "refiner"),  # type: ignore[arg-type]
            input_order=order,
            segmenter_sha256=self.text(table, "segmenter_sha256", None, "refiner"),
            architecture=self.refiner_architecture(table),
        )

    def refiner_architecture(self, table: dict) -> str | None:
        name = self.text(table, "architecture", None, "refiner")
        if name is not None and name not in REFINER_ARCHITECTURES:
            raise self.fail(f"refiner.architecture must be one of {', '.join(REFINER_ARCHITECTURES)}, got {name!r}")
        return name


_TOP_LEVEL = {f.name for f in fields(BundleSpec)}
_SEGMENTER_KEYS = {f.name for f in fields(SegmenterSpec)} - {"weights"}
_SEGMENTER_TEXT = (*SEGMENTER_KINDS, "weights", "torchscript_export", "outputs", "sha256")


def _article(noun: str) -> str:
    return {"str": "a string", "int": "a whole number", "list": "a list", "dict": "a table"}.get(noun, noun)


# --- digests: which segmenter a refiner was trained over -------------------------------------------------
def pairing_warning(bundle: "ModelBundle") -> str | None:
    """One sentence when the refiner was trained over another segmenter than the bundle's; None when they
    match or when the refiner records nothing (a reference checkpoint, an older file)."""
    refiner = bundle.refiner
    trained_with = getattr(refiner, "segmenter_sha256", None) if refiner is not None else None
    return _pairing_message(trained_with, bundle.segmenter.digest())


def _pairing_message(trained_with: str | None, current: str) -> str | None:
    if trained_with is None or current == trained_with:
        return None
    return (
        f"the refiner was trained over another segmenter (sha256 {trained_with[:12]}, this one is {current[:12]}); "
        "it may correct the wrong mistakes: retrain it with `magnet train-refiner --model` for this segmenter"
    )


# --- the loaded bundle ------------------------------------------------------------------------------------
@dataclass
class ModelBundle:
    """Everything `segment` needs from a model: segmenter, refiner, classes and inference defaults."""

    name: str
    classes: list[ClassInfo]
    segmenter: Segmenter
    refiner: RefinerNet | None
    points: float = 0.5  # count (> 1) or fraction of each level's pixels
    smooth_kernel: int = 11
    value_range: tuple[float, float] | None = None  # numbers only; "dtype" is read from `spec` (`reading`)
    bands: tuple[int, ...] | None = None  # counted from 1, as --bands
    levels: int | tuple[int, ...] | None = None  # default scale levels (as --levels); None: automatic
    # Automatic levels stop at this many: the coarsest level then shows the model no coarser a view
    # than it was trained on, however large the image. None: no cap.
    max_levels: int | None = None
    path: Path | None = None
    spec: BundleSpec | None = None  # the model.toml it was loaded from (or made for bring-your-own parts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.segmenter.input_size

    def reading(self, bands: tuple[int, ...] | None, value_range: str | tuple[float, float] | None
                ) -> tuple[tuple[int, ...] | None, str | tuple[float, float] | None]:
        """How images are read for this model: each option where given, else the bundle's; None: the default
        (every band rule of DESIGN section 4; value range auto). `segment` and both trainers read this way."""
        recorded = self.spec.value_range if self.spec is not None else self.value_range
        return (bands if bands is not None else self.bands, value_range if value_range is not None else recorded)


def check_input_size(input_size: tuple[int, int] | None, bundle: ModelBundle, directory: Path | str) -> None:
    """--input-size describes a bare --segmenter; with --model it may only repeat the bundle's own size,
    since the segmenter and refiner were trained at that one."""
    if input_size is not None and tuple(input_size) != tuple(bundle.input_size):
        raise UsageError(
            f"--input-size {input_size[0]}x{input_size[1]}: {directory} was trained at "
            f"{bundle.input_size[0]}x{bundle.input_size[1]}; --input-size goes with --segmenter"
        )


def load_bundle(directory: Path | str, *, trust_model: bool = False) -> ModelBundle:
    """Read a bundle folder strictly; every problem is a ModelError naming the file. A segmenter that can
    run code (a module:factory, a torch.export archive) is refused unless `trust_model` (--trust-model)."""
    directory = Path(directory)
    spec = BundleSpec.read(directory)
    segmenter = load_segmenter(directory, spec, trust_model=trust_model)
    refiner = None
    if spec.refiner is not None:
        refiner = load_refiner(directory / spec.refiner.weights, spec.refiner.input_order, len(spec.classes), spec.refiner.architecture)  # type: ignore[arg-type]
        refiner.segmenter_sha256 = spec.refiner.segmenter_sha256 or refiner.segmenter_sha256
    return _bundle(spec, segmenter, refiner, directory)


def _bundle(spec: BundleSpec, segmenter: Segmenter, refiner: RefinerNet | None, path: Path | None) -> ModelBundle:
    return ModelBundle(
        name=spec.name, classes=list(spec.classes), segmenter=segmenter, refiner=refiner, points=spec.points,
        smooth_kernel=spec.smooth_kernel, value_range=spec.value_range if isinstance(spec.value_range, tuple) else None,
        bands=spec.bands, levels=spec.levels,
        max_levels=spec.max_levels, path=path, spec=spec,
    )


def load_segmenter(directory: Path, spec: BundleSpec, *, trust_model: bool = False) -> Segmenter:
    """The segmenter a bundle's spec names, through its source (models/sources/), in eval mode on the CPU."""
    contract = Contract(len(spec.classes), spec.input_size, spec.mean, spec.std, bands_channels(spec.bands))
    source = SOURCES[spec.segmenter.kind]
    return source.load(spec.segmenter, directory, contract, trust_model=trust_model, named_by=str(directory / MODEL_FILE))


read_weights = read_state  # a segmenter state dict, read as data only (models/weights.py)


# --- writing ------------------------------------------------------------------------------------------
def write_bundle(directory: Path | str, spec: BundleSpec, segmenter: Segmenter | nn.Module, refiner: RefinerNet | None = None) -> BundleSpec:
    """Write the segmenter in the form the spec names (its source's `save`: weights, TorchScript, a copy of
    the ONNX or .pt2 file it came from), the refiner, then model.toml with the digests filled in; return
    that spec. The refiner's `segmenter_sha256` (set by the trainer) says which segmenter it was trained over.
    """
    directory = Path(directory)
    if isinstance(segmenter, nn.Module):
        segmenter = Segmenter(segmenter, len(spec.classes), spec.input_size)
    for part, module in (("segmenter", segmenter.module), ("refiner", refiner)):
        bad = first_non_finite(module.state_dict()) if module is not None else None
        if bad is not None:  # a diverged or damaged model segments nothing: never ship it as a bundle
            raise ModelError(f"{directory}: the {part}'s weight {bad!r} is not finite (NaN or inf); no bundle written")
    directory.mkdir(parents=True, exist_ok=True)
    source = spec.segmenter
    if segmenter.module is not None:
        segmenter.module.cpu()
    SOURCES[source.kind].save(segmenter, directory, source)
    written = directory / source.file
    digest = SOURCES[source.kind].digest_file(written) if SOURCES[source.kind].digests_file else segmenter.digest()
    spec = replace(spec, segmenter=replace(source, sha256=digest))
    if refiner is not None:
        refiner_spec = spec.refiner or RefinerSpec()
        trained_with = getattr(refiner, "segmenter_sha256", None)
        save_refiner(refiner, directory / refiner_spec.weights)
        spec = replace(spec, refiner=replace(
            refiner_spec, input_order=refiner.input_order, segmenter_sha256=trained_with, architecture=refiner.architecture,
        ))
    elif spec.refiner is not None:
        raise ValueError("a spec with [refiner] needs the refiner to write")
    spec.write(directory)
    return spec


def save_bundle(
    directory: Path | str,
    name: str,
    classes: list[ClassInfo],
    segmenter_module: nn.Module,
    architecture: str,
    input_size: tuple[int, int],
    refiner: RefinerNet | None,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    points: float = 0.5,
    smooth_kernel: int = 11,
    levels: int | list[int] | str = "auto",
    architecture_options: dict | None = None,
) -> Path:
    """A built-in segmenter (plus an optional refiner) as a bundle: a shorthand for `write_bundle`."""
    spec = BundleSpec(
        name=name,
        input_size=tuple(input_size),  # type: ignore[arg-type]
        classes=tuple(classes),
        segmenter=SegmenterSpec(
            architecture=architecture, options=_plain(architecture_options or {}), weights=SEGMENTER_WEIGHTS,
            torchscript_export=SEGMENTER_EXPORT,
        ),
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        points=float(points),
        smooth_kernel=smooth_kernel,
        levels=None if levels == "auto" else tuple(levels) if isinstance(levels, list) else levels,  # type: ignore[arg-type]
        refiner=RefinerSpec() if refiner is not None else None,
    )
    write_bundle(directory, spec, segmenter_module, refiner)
    return Path(directory)


def _plain(value: Any) -> Any:
    """Tuples as lists, so a spec equals its own read-back."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def bundle_from_parts(
    segmenter_path: Path | str,
    classes: list[ClassInfo] | None,
    input_size: tuple[int, int] | None,
    refiner_path: Path | str | None,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    refiner_input_order: str | None = None,
    trust_model: bool = False,
) -> ModelBundle:
    """A bundle for bring-your-own models: a segmenter file (ONNX, .pt2, TorchScript: chosen by its suffix)
    or a module:factory, plus an optional refiner. Code-running sources load only with `trust_model`.
    `input_size` None: the model's own fixed size (an error for a model that takes any size)."""
    reference = str(segmenter_path)
    source = source_for(reference)
    if input_size is None and not source.reads_size:
        raise UsageError("--segmenter needs --input-size HxW (the size the model was trained at)")
    if source.kind == "factory" and classes is None:
        raise UsageError(f"--segmenter {reference}: a factory needs --classes (it is called with the class count)")
    spec_values = {source.kind: reference}
    if source.kind == "factory":
        spec_values["weights"] = SEGMENTER_WEIGHTS
    segmenter_spec = SegmenterSpec(**spec_values)
    contract = Contract(len(classes) if classes is not None else None, tuple(input_size) if input_size else None, mean, std)  # type: ignore[arg-type]
    segmenter = source.load(segmenter_spec, None, contract, trust_model=trust_model)
    num_classes = segmenter.num_classes
    if classes is None:
        classes = default_classes(num_classes)
    refiner = (
        load_refiner(refiner_path, refiner_input_order, num_classes) if refiner_path is not None else None  # type: ignore[arg-type]
    )
    spec = BundleSpec(
        name=Path(reference).stem, input_size=segmenter.input_size, classes=tuple(classes), segmenter=segmenter_spec,
        mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
        refiner=RefinerSpec(str(refiner_path), refiner_input_order, refiner.segmenter_sha256, refiner.architecture) if refiner else None,
    )
    return _bundle(spec, segmenter, refiner, None)


# --- describing -------------------------------------------------------------------------------------------
def describe_bundle(directory: Path | str) -> dict[str, Any]:
    """What `magnet info --model DIR` shows: the bundle read strictly, as plain JSON-serialisable data.

    Describing runs no model code: a factory segmenter is described from its spec and its weights file
    (parameters unknown without calling it), never imported; an ONNX or .pt2 file by its file digest.
    """
    directory = Path(directory)
    spec = BundleSpec.read(directory)
    source = spec.segmenter
    # Input channels: what the network or its file header says; for a factory (never run to describe
    # it) or a file that does not say, what the bundle's bands or per-channel mean imply, else None.
    stated = bands_channels(spec.bands) or (len(spec.mean) if spec.mean is not None and len(spec.mean) > 1 else None)
    if source.factory is not None:
        digest, parameters, channels = state_digest(read_weights(directory / source.file)), None, stated
    elif SOURCES[source.kind].digests_file:
        digest, parameters = SOURCES[source.kind].digest_file(directory / source.file), None
        channels = SOURCES[source.kind].channels_in_file(directory / source.file) or stated
    else:
        segmenter = load_segmenter(directory, spec)
        module, channels = segmenter.module, segmenter.input_channels
        digest, parameters = segmenter_digest(module), sum(p.numel() for p in module.parameters())  # type: ignore[union-attr]
    refiner = None
    if spec.refiner is not None:
        loaded = load_refiner(directory / spec.refiner.weights, spec.refiner.input_order, len(spec.classes), spec.refiner.architecture)  # type: ignore[arg-type]
        trained_with = spec.refiner.segmenter_sha256 or loaded.segmenter_sha256
        refiner = {
            "file": spec.refiner.weights,
            "input_order": loaded.input_order,
            "architecture": loaded.architecture,
            "parameters": sum(p.numel() for p in loaded.parameters()),
            "segmenter_sha256": trained_with,
            "paired": None if trained_with is None else trained_with == digest,
            "warning": _pairing_message(trained_with, digest),
        }
    return {
        "path": str(Path(directory)),
        "name": spec.name,
        "description": spec.description,
        "classes": [{"id": i, "name": c.name, "color": list(c.color)} for i, c in enumerate(spec.classes)],
        "num_classes": len(spec.classes),
        "input_size": list(spec.input_size),
        "input_channels": channels,
        "mean": _list(spec.mean),
        "std": _list(spec.std),
        "value_range": spec.value_range if isinstance(spec.value_range, str) else _list(spec.value_range),
        "bands": _list(spec.bands),
        "resolution": str(spec.resolution) if spec.resolution is not None else None,
        "inference": {
            "points": spec.points,
            "smooth_kernel": spec.smooth_kernel,
            "levels": "auto" if spec.levels is None else _plain(spec.levels),
            "max_levels": spec.max_levels,
        },
        "segmenter": {
            "kind": source.kind,
            "source": getattr(source, source.kind),
            "file": source.file,
            "options": _plain(source.options),
            "torchscript_export": source.torchscript_export,
            "parameters": parameters,
            "sha256": digest,
            "sha256_recorded": source.sha256,
        },
        "refiner": refiner,
        "training": _training_summary(spec.training),
        "evaluation": {k: spec.evaluation[k] for k in ("data", "miou", "note") if k in spec.evaluation} or None,
    }


SCORE_SUFFIXES = ("miou", "loss")


def _training_summary(training: dict[str, Any]) -> dict[str, Any] | None:
    """Per trained part: its commands, data, epochs and final scores."""
    if not training:
        return None
    summary: dict[str, Any] = {}
    if isinstance(training.get("commands"), list):
        summary["commands"] = training["commands"]
    for part in ("segmenter", "refiner"):
        record = training.get(part)
        if not isinstance(record, dict):
            continue
        commands = record.get("commands") or ([record["command"]] if "command" in record else [])
        summary[part] = {
            "commands": commands,
            "data": record.get("data"),
            "val": record.get("val", record.get("val_data")),
            "epochs": record.get("epochs"),
            "scores": {k: v for k, v in record.items() if k.endswith(SCORE_SUFFIXES)},
        }
    return summary
