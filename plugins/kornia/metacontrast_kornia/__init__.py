"""metacontrast-kornia: on-device, batched view generation (SimCLR's augmentations)."""

__version__ = "0.1.0"
