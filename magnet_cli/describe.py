"""`info`: what an input image is, as `magnet info` shows it."""

from __future__ import annotations

from pathlib import Path

from magnet_cli.io.open import describe, open_image


def info(path: Path | str) -> dict:
    """Size, dtype, bands, stored pyramid levels, chunking and georeferencing of one image."""
    with open_image(path) as source:
        return describe(source)
