"""`info`: what an input image is, or what a model bundle is, as `magnet info` shows it."""

from __future__ import annotations

from pathlib import Path

from magnet_cli.errors import UsageError


def info(
    path: Path | str | None = None, *, model: Path | str | None = None, max_pixels: int | None = None
) -> dict:
    """Size, dtype, bands, stored pyramid levels, chunking and georeferencing of one image, with warnings
    for what `segment` would refuse from the headers (above `max_pixels`, a declared size the data cannot
    back, an unsupported bit depth); or, with `model` (or no image at all: the default bundle), the
    bundle's classes, contract, defaults and record."""
    if path is not None and model is not None:
        raise UsageError("give an image or --model, not both")
    if path is None:
        from magnet_cli.models.bundle import describe_bundle
        from magnet_cli.models.default import default_model_dir

        return describe_bundle(Path(model) if model is not None else default_model_dir())
    from magnet_cli.io.base import DEFAULT_MAX_PIXELS
    from magnet_cli.io.open import describe, open_image

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    with open_image(path, max_pixels=limit, strict=False) as source:
        return describe(source)
