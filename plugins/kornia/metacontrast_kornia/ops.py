"""Batched image operations on float images in [0, 1], ``(B, C, H, W)``.

Colour operations follow torchvision's definitions (brightness, contrast and saturation
blend with black, the grey mean and the grey image); hue rotation, grey conversion, blur
and the crop-and-resize warp come from kornia.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.device_constants import device_tensor

_FORCED_SELECTION: str | None = None


@contextlib.contextmanager
def selection(mode: str) -> Iterator[None]:
    """Force how ``where_rows`` selects rows, whatever the device: ``"subset"`` or
    ``"mask"`` (for tests and benchmarks comparing the two)."""
    global _FORCED_SELECTION
    if mode not in ("subset", "mask"):
        raise ValueError(f"selection mode must be 'subset' or 'mask', got {mode!r}")
    previous, _FORCED_SELECTION = _FORCED_SELECTION, mode
    try:
        yield
    finally:
        _FORCED_SELECTION = previous


def masks_rows(device: torch.device) -> bool:
    """Whether ``where_rows`` computes every row and keeps the selected ones (the default
    off the CPU) rather than computing only the selected rows (the default on the CPU)."""
    if _FORCED_SELECTION is not None:
        return _FORCED_SELECTION == "mask"
    return device.type != "cpu"


def where_rows(mask: Tensor, fn: Callable[..., Tensor], x: Tensor, *args: Tensor) -> Tensor:
    """``x (B, ...)`` with the rows where ``mask (B,)`` holds replaced by ``fn(x[rows],
    *(a[rows] for a in args))``; ``fn`` maps rows to rows of the same shape.

    On the CPU only the selected rows are computed (finding them costs nothing there). On
    an accelerator, finding them would make the host wait for the device (``nonzero``), so
    ``fn`` runs on every row and ``torch.where`` keeps the selected results: more
    arithmetic, no wait. Both give the same values."""
    if masks_rows(x.device):
        return torch.where(mask.view(-1, *([1] * (x.dim() - 1))), fn(x, *args), x)
    rows = mask.nonzero().squeeze(1)
    if rows.numel() == 0:
        return x
    if rows.numel() == x.shape[0]:
        return fn(x, *args)
    out = x.clone()
    out[rows] = fn(x[rows], *(a[rows] for a in args))
    return out


def constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor made once per device and dtype, on the device (building it
    from Python numbers at every call would copy from the host each time)."""
    return device_tensor(values, device, dtype)


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
    ``order (B, 4)``. Each stage runs every operation on the images whose order puts it
    there (``where_rows``)."""
    out = x
    for stage in range(4):
        for op_index, op in enumerate(JITTER_OPS):  # disjoint rows: each reads the last stage's
            out = where_rows(order[:, stage] == op_index, op, out, factors[:, op_index])
    return out


def crop_resize_flip(images: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop ``boxes (B, 4)`` = ``(x0, y0, w, h)`` out of ``images (B, C, H, W)``, resize to
    ``size x size`` (bilinear, corners aligned: output pixel ``j`` samples the box at
    ``x0 + j (w - 1) / (size - 1)``) and mirror where ``flip (B,)``: one ``grid_sample``."""
    _, _, height, width = images.shape
    x0, y0, w, h = boxes.to(images.dtype).unbind(-1)
    x1, y1 = x0 + w - 1, y0 + h - 1
    left = torch.where(flip, x1, x0)
    right = torch.where(flip, x0, x1)
    t = torch.linspace(0, 1, size, device=images.device, dtype=images.dtype)
    xs = left[:, None] + t * (right - left)[:, None]  # (B, S) source columns in pixels
    ys = y0[:, None] + t * (y1 - y0)[:, None]  # (B, S) source rows
    gx = (2 * xs / max(width - 1, 1) - 1)[:, None, :].expand(-1, size, -1)
    gy = (2 * ys / max(height - 1, 1) - 1)[:, :, None].expand(-1, -1, size)
    grid = torch.stack([gx, gy], dim=-1)  # (B, S, S, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur of ``x (B, C, H, W)`` with per-image ``sigma (B,)``: separable taps
    ``exp(-t^2 / (2 sigma^2))`` normalised to sum 1, ``t`` in ``[-k//2, k//2]``, reflect
    padding. Two grouped convolutions, one kernel per image and channel."""
    b, c, h, w = x.shape
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    taps = torch.exp(-t.square() / (2 * sigma.to(x.dtype).view(-1, 1).square()))  # (B, K)
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(c, dim=0, output_size=b * c)  # (B C, K)
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, taps.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, taps.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


def solarize(x: Tensor, threshold: float) -> Tensor:
    """Invert pixels at or above ``threshold``: ``x if x < t else 1 - x``."""
    return torch.where(x < threshold, x, 1 - x)
