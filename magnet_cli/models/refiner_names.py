"""The refiner architectures' names, torch-free so that settings can validate `--refiner-arch` without
importing torch (`magnet --help` stays fast). models/refiner.py maps each name to its network."""

from __future__ import annotations

REFERENCE = "reference"

# name -> one line for --help and the README; the order is the order users see.
REFINER_ARCHITECTURES: dict[str, str] = {
    REFERENCE: "the paper's refiner (Fig. 4), 64/128 channels at full window resolution; loads reference checkpoints",
    "lite": "four 3x3 convolutions of 32 channels at full resolution: the reference's receptive field at ~1/4 of its CPU time",
    "half": "the same 32-channel body at half resolution, bilinearly upsampled, plus a full-resolution 3x3 skip for thin structures",
    "half-wide": "half with a 64-channel body and a nonlinear 16-channel full-resolution skip: 1/8 of the reference's CPU time per window; the default bundle's",
}
