"""Class names and colours: parsed from `--classes N|FILE`, stored in bundles and label metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from magnet_cli.errors import UsageError

# A qualitative palette (distinct under common colour-vision deficiencies for the first entries).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
    (213, 94, 0), (204, 121, 167), (128, 128, 128), (153, 0, 0), (0, 102, 51), (102, 51, 153),
)


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its id (its index in the list), a name and an RGB colour."""

    name: str
    color: tuple[int, int, int]


def default_classes(count: int) -> list[ClassInfo]:
    """`count` classes named class_0.. with palette colours (cycled, then generated)."""
    from magnet_cli.settings import MAX_CLASSES

    if not 2 <= count <= MAX_CLASSES:
        raise UsageError(f"a segmentation needs 2 to {MAX_CLASSES} classes, got {count}")
    colors = [PALETTE[i] if i < len(PALETTE) else ((i * 67) % 256, (i * 139) % 256, (i * 211) % 256) for i in range(count)]
    return [ClassInfo(f"class_{i}", colors[i]) for i in range(count)]


def parse_classes(spec: str) -> list[ClassInfo]:
    """`--classes` value: an integer count, or a file (JSON list of {name, color} or one name per line)."""
    if spec.strip().isdigit():
        return default_classes(int(spec))
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--classes {spec}: neither a class count nor an existing file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(text)
            return classes_from_records(entries)
        except (ValueError, TypeError, KeyError) as error:
            raise UsageError(f"{path}: not a JSON list of {{name, color}} records ({error})") from None
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    fallback = default_classes(max(2, len(names)))
    if len(names) < 2:
        raise UsageError(f"{path}: needs at least 2 class names, found {len(names)}")
    return [ClassInfo(name, fallback[i].color) for i, name in enumerate(names)]


def classes_from_records(entries: list[dict]) -> list[ClassInfo]:
    """Classes from records such as those in model.toml or JSON: [{name, color: [r, g, b]}, ...]."""
    fallback = default_classes(max(2, len(entries)))
    classes = [
        ClassInfo(str(entry["name"]), tuple(int(c) for c in entry.get("color", fallback[i].color)))  # type: ignore[misc]
        for i, entry in enumerate(entries)
    ]
    if len(classes) < 2:
        raise UsageError(f"needs at least 2 classes, found {len(classes)}")
    default_classes(len(classes))  # the same bounds as a class count
    return classes


def classes_to_records(classes: list[ClassInfo]) -> list[dict]:
    """The inverse of `classes_from_records`."""
    return [{"name": c.name, "color": list(c.color)} for c in classes]
