"""Errors a user can cause. The CLI turns each into one red line and exit code 2."""

from __future__ import annotations


class MagnetError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class InputError(MagnetError):
    """An input image is missing, unreadable, corrupt or of an unsupported kind."""


class OutputError(MagnetError):
    """An output path exists without --overwrite, or cannot be written."""


class ModelError(MagnetError):
    """A model bundle, segmenter or refiner is missing, malformed or inconsistent."""


class UsageError(MagnetError):
    """An option value is invalid (bad level list, bad point count, ...)."""


class DeviceError(MagnetError):
    """The device ran out of memory or failed (a CUDA error): one line instead of a traceback."""


class MagnetWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints one yellow line)."""
