"""`info`: what an input image is, or what a model bundle is, as `magnet info` shows it."""

from __future__ import annotations

from pathlib import Path

from magnet_cli.errors import UsageError


def info(path: Path | str | None = None, *, model: Path | str | None = None) -> dict:
    """Size, dtype, bands, stored pyramid levels, chunking and georeferencing of one image; or, with
    `model` (or no image at all: the default bundle), the bundle's classes, contract, defaults and record."""
    if path is not None and model is not None:
        raise UsageError("give an image or --model, not both")
    if path is None:
        from magnet_cli.models.bundle import describe_bundle
        from magnet_cli.models.default import default_model_dir

        return describe_bundle(Path(model) if model is not None else default_model_dir())
    from magnet_cli.io.open import describe, open_image

    with open_image(path) as source:
        return describe(source)
