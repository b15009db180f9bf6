"""Small image helpers shared by view generators and evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.device_constants import device_tensor


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 or [0, 1] float ``(N, C, H, W)`` -> float32 ``(x / 255 - mean) / std``
    (the division by 255 only for uint8 input)."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"normalize: {x.shape[1]} channels but {len(mean)} means and {len(std)} stds")
    m = _per_channel(tuple(map(float, mean)), x.device, x.dtype)
    s = _per_channel(tuple(map(float, std)), x.device, x.dtype)
    return (x - m) / s


def _per_channel(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(1, C, 1, 1)`` per-channel values (a mean or a std), made once per device."""
    return device_tensor(values, device, dtype).view(1, -1, 1, 1)


def sample_resized_crops(n: int, height: int, width: int, *, scale: Sequence[float],
                         ratio: Sequence[float], generator: torch.Generator,
                         device: torch.device | str = "cpu") -> Tensor:
    """Crop boxes ``(n, 4)`` as ``(top, left, h, w)`` in pixels (floats): area a fraction
    ``U(scale)`` of the image, aspect ``w / h`` log-uniform in ``ratio``, clipped to the
    image, position uniform among the boxes that fit."""
    area = torch.empty(n, device=device).uniform_(float(scale[0]), float(scale[1]), generator=generator)
    log_r = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                   generator=generator)
    r = log_r.exp()
    w = (area * height * width * r).sqrt().clamp(1.0, float(width))
    h = (area * height * width / r).sqrt().clamp(1.0, float(height))
    top = torch.rand(n, device=device, generator=generator) * (height - h)
    left = torch.rand(n, device=device, generator=generator) * (width - w)
    return torch.stack([top, left, h, w], dim=1)


def resized_crop_flip(images: Tensor, boxes: Tensor, flip: Tensor) -> Tensor:
    """Crop ``boxes (N, 4)`` (top, left, h, w in pixels) out of float ``images (N, C, H, W)``,
    resize each back to ``H x W`` bilinearly (edge pixels repeated, no antialiasing) and
    mirror the rows where ``flip (N,)`` is true; one ``grid_sample`` for the batch."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    sx = w / width
    sy = h / height
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = torch.where(flip.to(images.device), -sx, sx)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], height, width], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_flip(images: Tensor, generator: torch.Generator, *,
                             scale: Sequence[float] = (0.08, 1.0),
                             ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Tensor:
    """The linear-evaluation and fine-tuning augmentation: a random resized crop and a
    horizontal flip with probability 1/2 per image. float ``(N, C, H, W)`` in, same out."""
    n, _, height, width = images.shape
    boxes = sample_resized_crops(n, height, width, scale=scale, ratio=ratio, generator=generator,
                                 device=images.device)
    flip = torch.rand(n, device=images.device, generator=generator) < 0.5
    return resized_crop_flip(images, boxes, flip)
