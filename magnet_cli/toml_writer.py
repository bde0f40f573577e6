"""A minimal TOML writer for model.toml (tomllib reads; the standard library cannot write)."""

from __future__ import annotations

import json
from typing import Any


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {_scalar(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps(document: dict[str, Any]) -> str:
    """Scalars and arrays first, then tables, then arrays of tables (one level of nesting each)."""
    lines: list[str] = []
    tables = {k: v for k, v in document.items() if isinstance(v, dict)}
    table_arrays = {
        k: v for k, v in document.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)
    }
    for key, value in document.items():
        if key not in tables and key not in table_arrays and value is not None:
            lines.append(f"{key} = {_scalar(value)}")
    for key, table in tables.items():
        lines += ["", f"[{key}]"] + [f"{k} = {_scalar(v)}" for k, v in table.items() if v is not None]
    for key, items in table_arrays.items():
        for item in items:
            lines += ["", f"[[{key}]]"] + [f"{k} = {_scalar(v)}" for k, v in item.items() if v is not None]
    return "\n".join(lines) + "\n"
