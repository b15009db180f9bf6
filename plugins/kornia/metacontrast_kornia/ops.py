"""Batched image operations on float images in [0, 1], ``(B, C, H, W)``.

Colour operations follow torchvision's definitions (brightness, contrast and saturation
blend with black, the grey mean and the grey image); hue rotation, grey conversion, blur
and the crop-and-resize warp come from kornia.
"""

from __future__ import annotations

import math

import kornia
import torch
from torch import Tensor


def _per_sample(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """``(B, 3, H, W) -> (B, 1, H, W)`` with ITU-R 601 weights; identity for 1 channel."""
    return x if x.shape[1] == 1 else kornia.color.rgb_to_grayscale(x)


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    """``x * factor`` clamped to [0, 1]; ``factor (B,)``."""
    return (x * _per_sample(factor)).clamp(0, 1)


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the mean grey level of each image: ``m + factor * (x - m)``."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (mean + _per_sample(factor) * (x - mean)).clamp(0, 1)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grey image: ``g + factor * (x - g)``; identity for 1 channel."""
    if x.shape[1] == 1:
        return x
    g = grayscale(x)
    return (g + _per_sample(factor) * (x - g)).clamp(0, 1)


def hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (fraction of the colour circle, ``(B,)``)."""
    if x.shape[1] == 1:
        return x
    return kornia.enhance.adjust_hue(x, shift * 2 * math.pi).clamp(0, 1)


JITTER_OPS = (brightness, contrast, saturation, hue)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Apply the four jitter operations with per-image ``factors (B, 4)`` in the per-image
    ``order (B, 4)``. Each stage runs every operation once, on the images whose order puts
    it there, so the cost is that of one pass of each operation."""
    out = x
    for stage in range(4):
        nxt = out.clone()
        for op_index, op in enumerate(JITTER_OPS):
            sel = (order[:, stage] == op_index).nonzero().squeeze(1)
            if sel.numel():
                nxt[sel] = op(out[sel], factors[sel, op_index])
        out = nxt
    return out


def crop_resize_flip(images: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop ``boxes (B, 4)`` = ``(x0, y0, w, h)`` out of ``images (B, C, H, W)``, resize to
    ``size x size`` (bilinear, corners aligned) and mirror where ``flip (B,)``: one warp."""
    x0, y0, w, h = boxes.unbind(-1)
    x1, y1 = x0 + w - 1, y0 + h - 1
    left = torch.where(flip, x1, x0)
    right = torch.where(flip, x0, x1)
    corners = torch.stack([torch.stack([left, y0], -1), torch.stack([right, y0], -1),
                           torch.stack([right, y1], -1), torch.stack([left, y1], -1)], dim=1)
    return kornia.geometry.transform.crop_and_resize(images, corners, (size, size),
                                                     mode="bilinear", align_corners=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with per-image ``sigma (B,)``, reflect padding."""
    s = sigma.view(-1, 1).expand(-1, 2).to(x.dtype)
    return kornia.filters.gaussian_blur2d(x, (kernel_size, kernel_size), s, border_type="reflect")


def solarize(x: Tensor, threshold: float) -> Tensor:
    """Invert pixels at or above ``threshold``: ``x if x < t else 1 - x``."""
    return torch.where(x < threshold, x, 1 - x)
