"""Colour-channel views of one image (CMC's RGB, L and ab of the Lab colour space),
made on the device with kornia's colour conversion.

A channel view is a group of channels of the same augmented image; MetAug (and CMC) give
each its own encoder and contrast the views' features. Values are brought to about
``[-1, 1]``: RGB ``2 x - 1``, L ``L / 50 - 1`` (L in [0, 100]), ab ``ab / 110``.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.color
import torch
from torch import Tensor

CHANNELS = {"RGB": 3, "L": 1, "ab": 2, "Lab": 3}


def check_channel_views(names: Sequence[str]) -> None:
    """Raise ``ValueError`` naming an unknown view or a list with fewer than one view."""
    if not names:
        raise ValueError("views: list at least one channel view (RGB, L, ab, Lab)")
    for name in names:
        if name not in CHANNELS:
            raise ValueError(f"views: unknown channel view {name!r}; available: {', '.join(CHANNELS)}")


def channel_views(rgb: Tensor, names: Sequence[str]) -> list[Tensor]:
    """``rgb (N, 3, H, W)`` in ``[0, 1]`` -> one tensor ``(N, C_v, H, W)`` per name."""
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"channel views need RGB images (N, 3, H, W), got {tuple(rgb.shape)}")
    lab = None
    if any(n != "RGB" for n in names):
        with torch.autocast(rgb.device.type, enabled=False):
            lab = kornia.color.rgb_to_lab(rgb.float().clamp(0, 1))
    out = []
    for name in names:
        if name == "RGB":
            out.append(rgb * 2 - 1)
            continue
        assert lab is not None
        light, ab = lab[:, :1] / 50 - 1, lab[:, 1:] / 110
        out.append({"L": light, "ab": ab, "Lab": torch.cat([light, ab], dim=1)}[name])
    return out
