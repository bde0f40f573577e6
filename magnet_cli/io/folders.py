"""Output folders: created like `mkdir -p` and checked writable before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from magnet_cli.errors import OutputError


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
