"""Output places: folders created like `mkdir -p` and checked writable, and outputs kept off the inputs,
all before any work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from magnet_cli.errors import OutputError
from magnet_cli.io.label_placement import find_placement


def make_output_folder(folder: Path, option: str) -> Path:
    """Create a missing output folder and check that files can be written there, so a bad path fails in
    one line naming the option before a long run, never after it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{option} {folder}: cannot create the folder, a file is in the way") from None
    except OSError as error:
        raise OutputError(f"{option} {folder}: cannot create the folder ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {folder}: the folder is not writable")
    return folder


def check_off_inputs(output: Path, option: str, inputs: Sequence[Path], labels_beside: bool = False) -> None:
    """Refuse an output that is an input, lies inside one, or holds one (real paths: symlinks and hard
    links see through). Even --overwrite never replaces what a run reads. `labels_beside`: a label image
    may go in the `labels` group of an OME-Zarr input (IMAGE.zarr/labels/NAME), the NGFF place for it."""
    real_output = Path(os.path.realpath(output))
    for source in inputs:
        real_input = Path(os.path.realpath(source))
        if real_output == real_input or _same_file(output, source):
            raise OutputError(f"{option} {output} is the input {source}; write the output somewhere else")
        if real_output.is_relative_to(real_input):
            inside = real_output.relative_to(real_input).parts
            if labels_beside and len(inside) == 2 and inside[0] == "labels" and find_placement(real_output) is not None:
                continue  # IMAGE.zarr/labels/NAME: labels beside their image (label_placement.py)
            raise OutputError(f"{option} {output} is inside the input {source}; write the output somewhere else")
        if real_input.is_relative_to(real_output):
            raise OutputError(f"{option} {output} holds the input {source}; write the output somewhere else")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False
