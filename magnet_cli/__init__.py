"""magnet-cli: MagNet progressive segmentation of gigapixel images in flat memory.

Every CLI command is a plain function here: `magnet_cli.segmentation(...)`, `magnet_cli.describe(...)`.
"""

from magnet_cli.errors import InputError, MagnetError, ModelError, OutputError, UsageError

__all__ = ["segment", "info", "synth", "MagnetError", "InputError", "ModelError", "OutputError", "UsageError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import magnet_cli` (and `magnet --help`) does not pay for torch and zarr imports.
    if name == "segment":
        from magnet_cli.segmentation import segment

        return segment
    if name == "info":
        from magnet_cli.describe import info

        return info
    if name == "synth":
        from magnet_cli.synthetic import synth

        return synth
    raise AttributeError(name)
