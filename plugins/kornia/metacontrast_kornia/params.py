"""Drawing the random parameters of SimCLR's augmentations, separately from applying them.

Every function takes an explicit ``torch.Generator`` and returns tensors with leading
dims ``(V, B)``, so that a view can be replayed from its parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CROP_ATTEMPTS = 10


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator,
            device: torch.device) -> Tensor:
    """``shape`` draws from ``U(low, high)``."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def crop_boxes(v: int, b: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], generator: torch.Generator,
               device: torch.device) -> Tensor:
    """Random resized crop boxes ``(V, B, 4)`` as integer-valued ``(x0, y0, w, h)``.

    As torchvision's RandomResizedCrop: up to 10 tries of area fraction ``U(scale)`` and
    log-uniform aspect ratio; the first that fits is kept; otherwise a centre crop with
    the aspect ratio clamped to ``ratio``. Drawn for all tries at once."""
    shape = (v, b, CROP_ATTEMPTS)
    area = height * width * uniform(shape, scale[0], scale[1], generator, device)
    log_r = uniform(shape, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(-1), ok.float().argmax(-1), torch.full((v, b), -1, device=device))
    pick = first.clamp(min=0).unsqueeze(-1)
    w = w.gather(-1, pick).squeeze(-1)
    h = h.gather(-1, pick).squeeze(-1)
    # fallback: centre crop of the whole image, aspect clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    failed = first < 0
    w = torch.where(failed, torch.full_like(w, fw), w)
    h = torch.where(failed, torch.full_like(h, fh), h)
    u = torch.rand((v, b, 2), generator=generator, device=device)
    x0 = torch.floor(u[..., 0] * (width - w + 1)).clamp(max=width - w)
    y0 = torch.floor(u[..., 1] * (height - h + 1)).clamp(max=height - h)
    x0 = torch.where(failed, torch.full_like(x0, (width - fw) // 2), x0)
    y0 = torch.where(failed, torch.full_like(y0, (height - fh) // 2), y0)
    return torch.stack([x0, y0, w, h], dim=-1)


def bernoulli(v: int, b: int, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """``(V, B)`` booleans, each true with probability ``p``."""
    return torch.rand((v, b), generator=generator, device=device) < p


def jitter_factors(v: int, b: int, strength: float, generator: torch.Generator,
                   device: torch.device) -> Tensor:
    """``(V, B, 4)``: brightness, contrast, saturation factors ``U(max(0, 1 - 0.8s), 1 + 0.8s)``
    and hue shift ``U(-0.2s, 0.2s)`` (fraction of the colour circle), SimCLR's strength s."""
    bcs = 0.8 * strength
    factors = uniform((v, b, 3), max(0.0, 1 - bcs), 1 + bcs, generator, device)
    hue = uniform((v, b, 1), -0.2 * strength, 0.2 * strength, generator, device)
    return torch.cat([factors, hue], dim=-1)


def jitter_order(v: int, b: int, generator: torch.Generator, device: torch.device,
                 random_order: bool) -> Tensor:
    """``(V, B, 4)``: the order in which brightness (0), contrast (1), saturation (2) and
    hue (3) are applied; a random permutation per view when ``random_order``."""
    if not random_order:
        return torch.arange(4, device=device).expand(v, b, 4).clone()
    return torch.rand((v, b, 4), generator=generator, device=device).argsort(dim=-1)
