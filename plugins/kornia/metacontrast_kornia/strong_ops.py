"""The 14 operations of CLSA's strong augmentation (Table 1), batched on the device.

Every operation maps float images ``x (B, C, H, W)`` in [0, 1] and per-image magnitudes
``m (B,)`` to images of the same shape; the pixel semantics are those of the uint8
operations the paper names (PIL's), with 255 read as 1. ``strong_augment`` applies
``rounds`` randomly chosen operations per image.

| op | magnitude |
| --- | --- |
| shear_x, shear_y | shear factor in [-0.3, 0.3] (about the image centre) |
| translate_x, translate_y | shift as a fraction of the side, [-0.3, 0.3] |
| rotate | degrees, [-30, 30] (positive: counter-clockwise on screen, as torchvision) |
| auto_contrast, invert, equalize | none |
| solarize | threshold in [0, 256] (uint8 levels; pixels at or above are inverted) |
| posterize | bits kept, an integer in [4, 8] |
| contrast, color, brightness, sharpness | enhancement factor in [0.05, 0.95] (1 = identity) |
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast_kornia import ops

GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
PHOTOMETRIC = ("auto_contrast", "invert", "equalize", "solarize", "posterize", "contrast", "color",
               "brightness", "sharpness")
OPS = GEOMETRIC + PHOTOMETRIC
"""The 14 operations, in the order of their integer codes."""

RANGES: dict[str, tuple[float, float]] = {
    "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3),
    "rotate": (-30.0, 30.0), "auto_contrast": (0.0, 1.0), "invert": (0.0, 1.0), "equalize": (0.0, 1.0),
    "solarize": (0.0, 256.0), "posterize": (4.0, 8.0), "contrast": (0.05, 0.95), "color": (0.05, 0.95),
    "brightness": (0.05, 0.95), "sharpness": (0.05, 0.95),
}
"""Table 1's magnitude range of each operation."""


def magnitudes(op: Tensor, u: Tensor) -> Tensor:
    """Map uniform draws ``u`` in [0, 1) to each operation's range; ``op`` holds op codes
    (same shape). Posterize's bits are the integers 4..8, each equally likely."""
    low = ops.constant(tuple(RANGES[name][0] for name in OPS), u.device, u.dtype)[op]
    high = ops.constant(tuple(RANGES[name][1] for name in OPS), u.device, u.dtype)[op]
    bits = torch.floor(4 + 5 * u).clamp(max=8)
    return torch.where(op == OPS.index("posterize"), bits, low + (high - low) * u)


# -- geometric: one affine warp per image --------------------------------------------

def affine_matrices(op: Tensor, m: Tensor, height: int, width: int) -> Tensor:
    """``(B, 2, 3)`` forward maps (source pixel -> output pixel) of geometric op codes
    ``op (B,)`` with magnitudes ``m (B,)``; identity for other codes."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    shear_x, shear_y = op == 0, op == 1
    shift_x = torch.where(shear_x, -m * cy, zero) + torch.where(op == 2, m * width, zero)
    shift_y = torch.where(shear_y, -m * cx, zero) + torch.where(op == 3, m * height, zero)
    mat = torch.stack([torch.stack([one, torch.where(shear_x, m, zero), shift_x], -1),  # x' = x + m (y - cy)
                       torch.stack([torch.where(shear_y, m, zero), one, shift_y], -1)],  # y' = y + m (x - cx)
                      dim=1)
    # m degrees counter-clockwise on screen (y down) about the centre, as torchvision:
    # the forward map x' = cx + c (x - cx) - s (y - cy), y' = cy + s (x - cx) + c (y - cy)
    rot = op == 4
    theta = torch.deg2rad(m)
    c, s = theta.cos(), theta.sin()
    rotation = torch.stack([torch.stack([c, -s, cx - c * cx + s * cy], -1),
                            torch.stack([s, c, cy - s * cx - c * cy], -1)], dim=1)
    return torch.where(rot.view(-1, 1, 1), rotation, mat)


def warp(x: Tensor, matrices: Tensor, fill: float) -> Tensor:
    """Bilinear affine warp, uncovered pixels set to ``fill``."""
    fill_value = ops.constant((fill,) * x.shape[1], x.device, x.dtype)
    return kornia.geometry.transform.warp_affine(x, matrices.to(x.dtype), (x.shape[2], x.shape[3]),
                                                 mode="bilinear", padding_mode="fill", fill_value=fill_value)


# -- photometric ----------------------------------------------------------------------

def _levels(x: Tensor) -> Tensor:
    """uint8 levels of ``x`` as int64 (rounded)."""
    return (x * 255).round().clamp(0, 255).long()


def auto_contrast(x: Tensor, m: Tensor | None = None) -> Tensor:
    """Stretch each channel so its darkest pixel is 0 and its brightest 1 (flat channels
    are left as they are)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((x - lo) * scale).clamp(0, 1)


def invert(x: Tensor, m: Tensor | None = None) -> Tensor:
    """``1 - x`` (uint8: ``255 - x``)."""
    return 1 - x


def equalize(x: Tensor, m: Tensor | None = None) -> Tensor:
    """Histogram equalisation of each channel, PIL's rule: with ``step = (N - n_last) //
    255`` (``n_last``: the count of the highest occupied level), level ``v`` maps to
    ``(cdf(v - 1) + step // 2) // step``; channels with ``step = 0`` are unchanged."""
    b, c, h, w = x.shape
    levels = _levels(x).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels))
    last = 255 - torch.flip(hist > 0, dims=[1]).long().argmax(dim=1)  # highest occupied level
    step = (h * w - hist.gather(1, last[:, None]).squeeze(1)) // 255
    cdf_before = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each level
    safe = step.clamp_min(1)[:, None]
    lut = ((cdf_before + safe // 2) // safe).clamp(max=255)
    out = lut.gather(1, levels)
    out = torch.where((step == 0)[:, None], levels, out)
    return (out.float() / 255).view(b, c, h, w).to(x.dtype)


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert the pixels at or above ``threshold (B,)`` (uint8 levels, 0..256)."""
    t = threshold.view(-1, 1, 1, 1).to(x.dtype)
    return torch.where(_levels(x) >= t, 1 - x, x)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top ``bits (B,)`` bits (4..8) of each uint8 level."""
    shift = (8 - bits.long()).view(-1, 1, 1, 1)
    mask = (255 >> shift) << shift
    return (_levels(x) & mask).to(x.dtype) / 255


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean grey level (factor 1 = identity)."""
    return ops.contrast(x, factor.to(x.dtype))


def color(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the grey image (saturation; identity for one channel)."""
    return ops.saturation(x, factor.to(x.dtype))


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with black: ``x * factor``."""
    return ops.brightness(x, factor.to(x.dtype))


SMOOTH = (1 / 13, 1 / 13, 1 / 13, 1 / 13, 5 / 13, 1 / 13, 1 / 13, 1 / 13, 1 / 13)
"""PIL's smoothing kernel, row by row."""


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's smoothed image (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 inside,
    border pixels unchanged): factor < 1 blurs, > 1 sharpens."""
    c = x.shape[1]
    kernel = ops.constant(SMOOTH, x.device, x.dtype).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    f = factor.to(x.dtype).view(-1, 1, 1, 1)
    return (smooth + f * (x - smooth)).clamp(0, 1)


PHOTOMETRIC_OPS = {"auto_contrast": auto_contrast, "invert": invert, "equalize": equalize,
                   "solarize": solarize, "posterize": posterize, "contrast": contrast, "color": color,
                   "brightness": brightness, "sharpness": sharpness}


def apply_op(name: str, x: Tensor, m: Tensor, fill: float = 0.5) -> Tensor:
    """Operation ``name`` on every image of ``x`` with magnitudes ``m (B,)``."""
    if name in GEOMETRIC:
        code = torch.full((x.shape[0],), OPS.index(name), device=x.device)
        return warp(x, affine_matrices(code, m, x.shape[2], x.shape[3]), fill)
    return PHOTOMETRIC_OPS[name](x, m)


def strong_augment(x: Tensor, op: Tensor, apply: Tensor, m: Tensor, fill: float = 0.5) -> Tensor:
    """Rounds of random operations: in round ``r`` image ``b`` gets operation
    ``op[b, r]`` with magnitude ``m[b, r]`` when ``apply[b, r]``. ``x (B, C, H, W)``;
    ``op``, ``apply``, ``m`` ``(B, R)``. Each round runs every operation once, on the
    images that drew it (``ops.where_rows``); geometric ones share one warp."""
    out = x
    height, width = x.shape[2], x.shape[3]
    for r in range(op.shape[1]):
        code = torch.where(apply[:, r], op[:, r], torch.full_like(op[:, r], -1))
        out = ops.where_rows((code >= 0) & (code < len(GEOMETRIC)),
                             lambda rows, c, mag: warp(rows, affine_matrices(c, mag, height, width), fill),
                             out, code, m[:, r])
        for offset, name in enumerate(PHOTOMETRIC):  # disjoint rows: each reads the last round's
            out = ops.where_rows(code == len(GEOMETRIC) + offset, PHOTOMETRIC_OPS[name], out, m[:, r])
    return out
