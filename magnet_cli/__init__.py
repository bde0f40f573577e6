"""magnet-cli: MagNet progressive segmentation of gigapixel images in flat memory.

Every CLI command is a plain function here, taking the same settings objects the CLI builds:

    import magnet_cli
    from magnet_cli.settings import InferenceSettings
    magnet_cli.segment(["slide.tif"], "slide.zarr", inference=InferenceSettings(mode="fast"))

No exported name is also a submodule's name, so `import magnet_cli.segmentation` (or any other
submodule) never hides a function behind a module.
"""

from importlib import import_module

from magnet_cli.errors import InputError, MagnetError, MagnetWarning, ModelError, OutputError, UsageError

__version__ = "0.2.0"

# Exported name -> the module that defines it. Imported on first use, so `import magnet_cli` (and
# `magnet --help`) does not pay for torch and zarr.
_LAZY = {
    "segment": "magnet_cli.segmentation",
    "info": "magnet_cli.describe",
    "synth": "magnet_cli.synthetic",
    "evaluate": "magnet_cli.evaluation",
    "benchmark": "magnet_cli.bench",
    "train_segmenter": "magnet_cli.train.segmenter",
    "train_refiner": "magnet_cli.train.refiner",
    "ModelSettings": "magnet_cli.settings",
    "InferenceSettings": "magnet_cli.settings",
    "OutputSettings": "magnet_cli.settings",
    "RunSettings": "magnet_cli.settings",
    "SegmenterTraining": "magnet_cli.settings",
    "RefinerTraining": "magnet_cli.settings",
}

__all__ = [*_LAZY, "MagnetError", "MagnetWarning", "InputError", "ModelError", "OutputError", "UsageError", "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'magnet_cli' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function, and no submodule import can replace it
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
