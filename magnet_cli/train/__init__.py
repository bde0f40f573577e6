"""Training: datasets of MagNet windows and (coarse map, fine map) pairs, and the two training loops."""

from magnet_cli.train.dataset import (
    RefinerPairSampler,
    SegmentationDataset,
    WindowSampler,
    load_dataset,
)

__all__ = ["RefinerPairSampler", "SegmentationDataset", "WindowSampler", "load_dataset"]
