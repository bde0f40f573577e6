"""What a `segment` run takes and writes by name: the images its inputs stand for (files, folders,
`-` and `@FILE` lists of paths) and the label image each one gets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from magnet_cli.errors import InputError, UsageError
from magnet_cli.io.labels import check_finished
from magnet_cli.io.open import list_images
from magnet_cli.io.zarr_source import is_zarr_dir

OUTPUT_SUFFIX = ".zarr"
# An -o with one of these names another format: writing a Zarr folder under that name would mislead.
OTHER_FORMAT_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".geojson", ".gpkg", ".shp", ".json", ".h5", ".npy")
STDIN_LIST = "-"  # an input `-` reads input paths from stdin, one per line
LIST_PREFIX = "@"  # an input `@FILE` reads input paths from FILE, one per line


def expand_inputs(inputs: Sequence[Path | str], problems: dict[Path, str] | None = None) -> list[Path]:
    """Files as given; a folder stands for every image in it; `-` and `@FILE` for the paths they list.

    An entry that cannot be an input (missing, an empty folder, an unfinished output) is an InputError;
    with `problems` given, it is kept in the list and its reason recorded there instead, so that a batch
    can report it as a failed image and go on with the others."""
    if not inputs:
        raise UsageError("no input given")
    paths: list[Path] = []
    for item in [entry for given in inputs for entry in _listed(given)]:
        path = Path(item)
        try:
            if path.is_dir() and not is_zarr_dir(path):
                found = list_images(path)
                if not found:
                    raise InputError(f"{path}: folder holds no supported image")
                paths.extend(found)
            elif path.exists():
                if is_zarr_dir(path):
                    check_finished(path)  # an interrupted run's partial store is not an image
                paths.append(path)
            else:
                raise InputError(f"{path}: no such file")
        except InputError as error:
            if problems is None:
                raise
            problems[path] = str(error)
            paths.append(path)
    return paths


def is_list_input(item: Path | str) -> bool:
    """`-` (stdin) or `@FILE`: a list of inputs, which always makes a batch (OUTPUT is a folder)."""
    text = str(item)
    return text == STDIN_LIST or text.startswith(LIST_PREFIX)


def _listed(item: Path | str) -> list[str]:
    """The paths a list input names (one per line, surrounding blanks stripped, empty lines skipped)."""
    text = str(item)
    if not is_list_input(text):
        return [text]
    if text == STDIN_LIST:
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = Path(text[len(LIST_PREFIX):]).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"{text}: cannot read the list of inputs ({getattr(error, 'strerror', None) or error})") from None
    entries = [line.strip() for line in lines if line.strip()]
    if not entries:
        raise UsageError(f"{'stdin' if text == STDIN_LIST else text}: lists no input")
    return entries


def output_paths(inputs: list[Path], output: Path, multiple: bool) -> list[Path]:
    """One input writes OUTPUT itself; several write OUTPUT/<name>.zarr."""
    if not multiple:
        if output.suffix.lower() in OTHER_FORMAT_SUFFIXES:
            raise UsageError(
                f"-o {output}: label images are written as OME-Zarr (name it .zarr); "
                f"for a {output.suffix} file add it as a side output (--geotiff FILE.tif, --preview FILE.png, "
                "--vector FILE.geojson)"
            )
        return [output]
    names = [p.name[: -len(p.suffix)] if p.suffix else p.name for p in inputs]
    if len(set(names)) != len(names):
        raise UsageError("several inputs share a name; segment them into separate output folders")
    return [output / f"{name}{OUTPUT_SUFFIX}" for name in names]
