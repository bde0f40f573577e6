"""Physical pixel sizes: what a reader finds in its file's metadata, what `--resolution` and a bundle's
`resolution` ask for, and the factor between the two.

Two families of units never mix: microscopy lengths in micrometres ("um"; nm and mm are converted) and
the map units of a CRS ("m", "ft" or "deg"), which GIS rasters carry. No numpy or torch here: settings.py
parses `--resolution` with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Unit spellings -> (canonical unit, factor into it).
UNITS: dict[str, tuple[str, float]] = {
    "nm": ("um", 1e-3), "nanometer": ("um", 1e-3), "nanometre": ("um", 1e-3),
    "um": ("um", 1.0), "µm": ("um", 1.0), "μm": ("um", 1.0), "micron": ("um", 1.0), "microns": ("um", 1.0),
    "micrometer": ("um", 1.0), "micrometre": ("um", 1.0),
    "mm": ("um", 1e3), "millimeter": ("um", 1e3), "millimetre": ("um", 1e3),
    "m": ("m", 1.0), "meter": ("m", 1.0), "metre": ("m", 1.0), "km": ("m", 1e3),
    "ft": ("ft", 1.0), "foot": ("ft", 1.0), "feet": ("ft", 1.0),
    "deg": ("deg", 1.0), "degree": ("deg", 1.0), "degrees": ("deg", 1.0),
}
# The NGFF name of each canonical unit, for the axes of a label image (NGFF's space units are lengths:
# degrees get none, and GIS tools place such labels by the GeoTIFF or vector georeferencing instead).
NGFF_UNITS = {"um": "micrometer", "m": "meter", "ft": "foot"}
# Working at a resolution within this share of the native one is working at the native one: a slide
# scanned at 0.2520 um/px segmented "at 0.25 um" is not resampled by 0.8%.
TOLERANCE = 0.05
FULL = "full"  # --resolution full: no resampling, whatever the bundle says
_RESOLUTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-zµμ]+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class PixelSize:
    """The size of one level-0 pixel along y and x, in `unit` ("um", "m", "ft" or "deg")."""

    y: float
    x: float
    unit: str

    def __str__(self) -> str:
        if math.isclose(self.y, self.x, rel_tol=1e-9):
            return f"{self.x:.6g} {self.unit}"
        return f"{self.y:.6g} x {self.x:.6g} {self.unit} (y x)"

    def text(self) -> str:
        """The option's spelling ("0.5um"), as a bundle's model.toml stores it (isotropic sizes only)."""
        return f"{self.x:.10g}{self.unit}"

    def scaled(self, fy: float, fx: float) -> PixelSize:
        return PixelSize(self.y * fy, self.x * fx, self.unit)


def pixel_size(y: float | None, x: float | None, unit: str | None) -> PixelSize | None:
    """A PixelSize from a file's values and unit spelling; None when a value is missing, not a positive
    finite number, or the unit is none we know (TIFF's "no unit", NGFF without units)."""
    known = UNITS.get(str(unit).strip().lower()) if unit is not None else None
    try:
        values = [float(v) for v in (y, x)]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if known is None or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    canonical, factor = known
    return PixelSize(values[0] * factor, values[1] * factor, canonical)


def parse_resolution(text: str) -> PixelSize | str:
    """`0.5um`, `500nm`, `1m`, `0.0001deg` -> a square PixelSize; `full` -> FULL. ValueError otherwise."""
    if str(text).strip().lower() == FULL:
        return FULL
    match = _RESOLUTION.match(str(text))
    size = pixel_size(match.group(1), match.group(1), match.group(2)) if match else None
    if size is None:
        raise ValueError(f"{text!r}: expected a size with its unit (0.5um, 500nm, 1m, 0.0001deg) or full")
    return size


def working_factor(native: PixelSize, target: PixelSize) -> tuple[float, float]:
    """Input pixels per working pixel (y, x): target / native, 1 where within TOLERANCE of it.
    ValueError when the target is finer than the image (that would upsample) or in other units."""
    if native.unit != target.unit:
        raise ValueError(f"the image's pixels are in {native.unit}, the resolution asked for in {target.unit}")
    factors = []
    for have, want in ((native.y, target.y), (native.x, target.x)):
        factor = want / have
        if abs(factor - 1) <= TOLERANCE:
            factor = 1.0
        elif factor < 1:
            raise ValueError(f"the image's pixels are {native}; --resolution {target.text()} would upsample")
        factors.append(factor)
    return factors[0], factors[1]


def tiff_resolution(x_resolution: object, y_resolution: object, unit: int | None) -> PixelSize | None:
    """The pixel size of TIFF XResolution/YResolution (pixels per ResolutionUnit: 2 inch, 3 cm); None for
    resolution unit 1 ("none"), missing tags, and the 72 or 1 pixels per inch writers put in by default."""
    x, y = _rational(x_resolution), _rational(y_resolution)
    if unit not in (2, 3) or x is None or y is None or x <= 0 or y <= 0:
        return None
    if unit == 2 and {x, y} <= {1.0, 72.0, 96.0}:  # a screen's dpi, not a scan's
        return None
    per_unit_um = 25400.0 if unit == 2 else 1e4
    return pixel_size(per_unit_um / y, per_unit_um / x, "um")


def _rational(value: object) -> float | None:
    """A TIFF RATIONAL as tifffile gives it ((numerator, denominator) or a number)."""
    try:
        if isinstance(value, (tuple, list)):
            numerator, denominator = (float(v) for v in value[:2])
            return numerator / denominator if denominator else None
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
