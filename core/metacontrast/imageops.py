"""Small image helpers shared by view generators and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 or [0, 1] float ``(N, C, H, W)`` -> float32 ``(x / 255 - mean) / std``
    (the division by 255 only for uint8 input)."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1]:
        raise ValueError(f"normalize: {x.shape[1]} channels but {m.shape[1]} means")
    return (x - m) / s
