"""A minimal TOML writer for model.toml (tomllib reads; the standard library cannot write).

`tomllib.loads(dumps(d)) == d` for any dict of strings, booleans, numbers, lists and dicts without None
(None has no TOML spelling: it is left out, which reads back as "absent").
"""

from __future__ import annotations

import json
import re
from typing import Any

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted key (class names may hold spaces or dots)."""
    return key if BARE_KEY.match(key) else json.dumps(key)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr of inf and nan are TOML's spellings too
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):  # an inline table (inside arrays only: tables get their own header)
        items = [f"{_key(k)} = {_scalar(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) for i in value)


def _table(lines: list[str], path: list[str], table: dict[str, Any], header: str | None) -> None:
    """Scalars of `table` under `header`, then each sub-table under its dotted header."""
    scalars = [(k, v) for k, v in table.items() if v is not None and not isinstance(v, dict)]
    if header is not None and (scalars or not any(isinstance(v, dict) for v in table.values())):
        lines += ["", header]
    lines += [f"{_key(k)} = {_scalar(v)}" for k, v in scalars if not (header is None and _is_table_array(v))]
    for key, value in table.items():
        if isinstance(value, dict):
            dotted = [*path, _key(key)]
            _table(lines, dotted, value, f"[{'.'.join(dotted)}]")


def dumps(document: dict[str, Any]) -> str:
    """Top-level scalars and arrays, then tables (nested ones as [a.b]), then top-level arrays of tables."""
    lines: list[str] = []
    _table(lines, [], document, None)
    for key, items in document.items():
        if _is_table_array(items):
            for item in items:
                lines += ["", f"[[{_key(key)}]]"] + [f"{_key(k)} = {_scalar(v)}" for k, v in item.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"
