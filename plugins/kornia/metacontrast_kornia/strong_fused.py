"""CLSA's rounds of strong operations for every strong view at once, in few device operations.

The same rounds as ``strong_ops.strong_augment`` (each image draws one of Table 1's 14
operations per round, applied with probability ``op_p``), written for an accelerator: all
strong views of all sizes in one ``Canvas``, and each round as four formulas that every
image goes through, an image's own operation taking effect in its family and the others
acting as the identity:

- geometric (shear, translate, rotate): one ``grid_sample`` with each image's inverse
  affine map (the identity's result is discarded), plus the grey fill of uncovered pixels;
  the grids and fills of every round are made before the first;
- blends (contrast, color, brightness, sharpness) and auto-contrast: ``clamp(a x + b + D)``,
  ``D = c_m mean(grey) + c_g grey + c_s smooth(x)`` with per-image ``a``, ``c``s (1 and
  0s: identity) and per-channel ``a``, ``b`` for auto-contrast;
- levels (invert, solarize, posterize): a threshold (0: invert all, 256: none) and a
  quantum (1: none) per image;
- equalisation: every image's histogram in one ``scatter_add``, PIL's lookup table,
  applied where the image drew it.

The kernels of a step do not depend on the number of strong views, the batch or the
operations drawn; nothing waits for the device.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.device_constants import device_tensor
from metacontrast_kornia.canvas import Canvas, constants
from metacontrast_kornia.fused import grey
from metacontrast_kornia.ops import constant
from metacontrast_kornia.strong_ops import GEOMETRIC, OPS, SMOOTH

CODE = {name: i for i, name in enumerate(OPS)}
BLENDS = ("contrast", "color", "sharpness")  # brightness: a = factor and no D


@dataclasses.dataclass(frozen=True, eq=False)
class RoundPlan:
    """Everything a round applies, per round ``r`` (leading dim R), strong view and image.

    ``geometric (R, V, B, 1, 1)``: the image warps this round; ``grid (R, V*B, S, S, 2)``
    its sampling grid; ``fill (R, V, B, 1, S*S)``: the grey added where the warp leaves the
    image. ``a`` and ``c_mean`` (divided by the view's pixels), ``c_grey``, ``c_smooth``
    ``(R, V, B, 1, 1)``: the blend; ``auto_contrast (R, V, B, 1, 1)``. ``threshold``: levels
    at or above are inverted; ``inverse_quantum``: 1 / posterize's step in levels and
``quantum_level`` the step in [0, 1] units (1 and 1/255: none), ``posterize``,
    ``equalize`` ``(R, V, B, 1, 1)``."""

    geometric: Tensor
    grid: Tensor
    fill: Tensor
    a: Tensor
    c_mean: Tensor
    c_grey: Tensor
    c_smooth: Tensor
    auto_contrast: Tensor
    threshold: Tensor
    inverse_quantum: Tensor
    quantum_level: Tensor
    posterize: Tensor
    equalize: Tensor


def select_round(plan: RoundPlan, r: int) -> RoundPlan:
    """Round ``r`` of ``plan`` alone (a plan of one round)."""
    return RoundPlan(**{f.name: getattr(plan, f.name)[r:r + 1] for f in dataclasses.fields(RoundPlan)})


@functools.lru_cache(maxsize=32)
def _inverse_affine_table(sizes: tuple[int, ...], side: int, device: torch.device) -> Tensor:
    """``(15, V, 6, 4)``: for op code ``k`` (row ``k + 1``; row 0: no operation) and view
    ``v``, the six entries of the inverse map (output pixel -> source point, in the canvas'
    normalised coordinates, corners aligned) as linear combinations of ``(1, m, cos t,
    sin t)``, ``m`` the magnitude and ``t`` the rotation in radians. The inverse of a shear
    or translation by ``m`` is the one by ``-m``; of a rotation about the view's centre, the
    rotation by ``-t``."""
    rows: list[float] = []
    k = 2 / max(side - 1, 1)
    for row in range(len(OPS) + 1):
        name = OPS[row - 1] if row else None
        for size in sizes:
            h = (size - 1) / 2
            e = [[1.0, 0.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4, [0.0] * 4, [1.0, 0.0, 0.0, 0.0], [0.0] * 4]
            if name == "shear_x":
                e[1][1], e[2][1] = -1.0, h
            elif name == "shear_y":
                e[3][1], e[5][1] = -1.0, h
            elif name == "translate_x":
                e[2][1] = -float(size)
            elif name == "translate_y":
                e[5][1] = -float(size)
            elif name == "rotate":
                e = [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [h, 0.0, -h, -h],
                     [0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0], [h, 0.0, -h, h]]
            e = [[x * k for x in entry] for entry in e]
            e[2][0] -= 1.0
            e[5][0] -= 1.0
            rows.extend(x for entry in e for x in entry)
    return device_tensor(tuple(rows), device, torch.float32).view(len(OPS) + 1, len(sizes), 6, 4)


@functools.lru_cache(maxsize=32)
def _interior(sizes: tuple[int, ...], side: int, device: torch.device) -> Tensor:
    """``(V, 1, 1, S*S)`` bool: pixels at least one pixel inside each view's border (PIL's
    smoothing leaves the border as it is)."""
    with torch.inference_mode(False):
        j = torch.arange(side, device=device)
        size = device_tensor(tuple(float(s) for s in sizes), device, torch.float32).view(-1, 1)
        inside = (j >= 1) & (j <= size - 2)  # (V, S)
        return (inside[:, :, None] & inside[:, None, :]).reshape(len(sizes), 1, 1, side * side)


def round_plan(op: Tensor, apply: Tensor, magnitude: Tensor, sizes: tuple[int, ...], side: int,
               fill: float) -> RoundPlan:
    """The plan of every round from the drawn ``op``, ``apply``, ``magnitude`` ``(V, B, R)``
    of the strong views (of ``sizes``, on a canvas of ``side``)."""
    dev = op.device
    v, b, r = op.shape
    code = torch.where(apply, op, -1).permute(2, 0, 1)  # (R, V, B)
    m = magnitude.permute(2, 0, 1)
    k = constants(sizes, side, dev)
    # geometric: inverse maps -> grids; the uncovered share of each output pixel -> fill
    theta = m * (math.pi / 180)
    features = torch.stack([torch.ones_like(m), m, theta.cos(), theta.sin()], dim=-1)  # (R, V, B, 4)
    table = _inverse_affine_table(sizes, side, dev)
    rows = table[code + 1, _view_index(v, dev)]  # (R, V, B, 6, 4)
    inverse = (rows * features[..., None, :]).sum(-1).reshape(r, v, b, 2, 3)
    grid = k.xy @ inverse.transpose(-1, -2)  # (R, V, B, S*S, 2)
    if min(sizes) != side:
        grid = torch.where(k.valid_mask.view(1, v, 1, side * side, 1), grid, -3.0)
    grid = grid.reshape(r, v * b, side, side, 2)
    coverage = F.grid_sample(k.valid.view(1, v, 1, 1, side, side).expand(r, v, b, 1, side, side)
                             .reshape(r * v * b, 1, side, side), grid.reshape(r * v * b, side, side, 2),
                             mode="bilinear", padding_mode="zeros", align_corners=True)
    uncovered = (1 - coverage.reshape(r, v, b, 1, side * side)) * (k.valid * fill)
    geometric = (code >= 0) & (code < len(GEOMETRIC))
    # blends and auto-contrast
    blend = code[..., None] == constant(tuple(CODE[n] for n in BLENDS), dev, torch.long)
    coefficients = (1 - m)[..., None] * blend  # (R, V, B, 3)
    enhance = code >= CODE["contrast"]
    a = torch.where(enhance, m, 1.0)
    c_mean = coefficients[..., 0] / k.pixels.view(1, v, 1)
    # levels
    threshold = torch.where(code == CODE["invert"], 0.0, torch.where(code == CODE["solarize"], m, 256.0))
    posterize = code == CODE["posterize"]
    quantum = torch.where(posterize, torch.exp2(8 - m), 1.0)

    def cell(t: Tensor) -> Tensor:
        return t[..., None, None]

    return RoundPlan(geometric=cell(geometric), grid=grid, fill=uncovered, a=cell(a), c_mean=cell(c_mean),
                     c_grey=cell(coefficients[..., 1]), c_smooth=cell(coefficients[..., 2]),
                     auto_contrast=cell(code == CODE["auto_contrast"]), threshold=cell(threshold),
                     inverse_quantum=cell(quantum.reciprocal()), quantum_level=cell(quantum / 255),
                     posterize=cell(posterize),
                     equalize=cell(code == CODE["equalize"]))


def strong_rounds(canvas: Canvas, plan: RoundPlan) -> Canvas:
    """Every round of ``plan`` on the strong views of ``canvas`` (images in [0, 1])."""
    flat = canvas.flat
    v, b, c, p = flat.shape
    side = canvas.side
    k = canvas.constants()
    mixed = canvas.mixed
    valid = k.valid_mask if mixed else None
    interior = _interior(canvas.sizes, side, flat.device)
    kernel = constant(SMOOTH, flat.device, flat.dtype).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    bins = _histogram_bins(canvas.sizes, b, c, flat.device)
    for r in range(plan.grid.shape[0]):
        # geometric
        warped = F.grid_sample(flat.reshape(v * b, c, side, side), plan.grid[r], mode="bilinear",
                               padding_mode="zeros", align_corners=True).reshape(v, b, c, p)
        flat = torch.where(plan.geometric[r], warped + plan.fill[r], flat)
        # blends and auto-contrast
        g = grey(flat)
        mean_term = g.sum(-1, keepdim=True) * plan.c_mean[r]
        if mixed:
            mean_term = mean_term * k.valid
        smooth = F.conv2d(flat.reshape(v * b, c, side, side), kernel, padding=1, groups=c).reshape(v, b, c, p)
        smooth = torch.where(interior, smooth, flat)
        d = torch.addcmul(torch.addcmul(mean_term, plan.c_grey[r], g), plan.c_smooth[r], smooth)
        high = flat.amax(-1, keepdim=True)
        low = (flat + k.padding_lift if mixed else flat).amin(-1, keepdim=True)
        spread = high - low
        flat_channel = spread <= 0  # PIL leaves a flat channel as it is
        auto = plan.auto_contrast[r]
        a = torch.where(auto, torch.where(flat_channel, 1.0, spread.reciprocal()), plan.a[r])
        low = torch.where(auto & ~flat_channel, low, 0.0)
        flat = torch.addcmul(d, a, flat - low).clamp_(0, 1)
        # levels: invert, solarize, posterize
        levels = (flat * 255).round_()
        invert = levels >= plan.threshold[r]
        if valid is not None:
            invert = invert & valid
        flipped = torch.where(invert, 1 - flat, flat)
        posterized = torch.floor(levels * plan.inverse_quantum[r]) * plan.quantum_level[r]
        equalized = _equalize(levels, bins, valid)
        flat = torch.where(plan.posterize[r], posterized, flipped)
        flat = torch.where(plan.equalize[r], equalized, flat)
    return canvas.with_flat(flat)


@functools.lru_cache(maxsize=32)
def _view_index(v: int, device: torch.device) -> Tensor:
    with torch.inference_mode(False):
        return torch.arange(v, device=device).view(1, v, 1)


@dataclasses.dataclass(frozen=True, eq=False)
class _Bins:
    """Histogram bookkeeping of ``(V, B, C)`` channels: ``offset (V, B, C, 1)``, each
    channel's first bin in a flat histogram of 257 bins per channel (the last collects the
    padding); ``levels (256,)``; ``pixels (V, 1, 1, 1)`` of each view; ``one``: 1."""

    offset: Tensor
    levels: Tensor
    pixels: Tensor
    one: Tensor


@functools.lru_cache(maxsize=32)
def _histogram_bins(sizes: tuple[int, ...], b: int, c: int, device: torch.device) -> _Bins:
    v = len(sizes)
    with torch.inference_mode(False):
        offset = (torch.arange(v * b * c, device=device) * 257).view(v, b, c, 1)
        pixels = device_tensor(tuple(s * s for s in sizes), device, torch.long).view(v, 1, 1, 1)
        return _Bins(offset=offset, levels=torch.arange(256, device=device), pixels=pixels,
                     one=torch.ones((), dtype=torch.long, device=device))


def _equalize(levels: Tensor, bins: _Bins, valid: Tensor | None) -> Tensor:
    """PIL's histogram equalisation of every channel (see ``strong_ops.equalize``) of the
    float ``levels (V, B, C, P)`` (0..255), back in [0, 1]; ``valid (V, 1, 1, P)``: the
    views' own pixels (``None``: all)."""
    index = levels.long()
    flat_index = index + bins.offset
    if valid is not None:  # the padding goes to each channel's spare bin
        flat_index = torch.where(valid, flat_index, bins.offset + 256)
    hist = torch.zeros(bins.offset.numel() * 257, dtype=torch.long, device=levels.device)
    hist = hist.scatter_add_(0, flat_index.reshape(-1), bins.one.expand(flat_index.numel()))
    hist = hist.view(*bins.offset.shape[:3], 257)[..., :256]
    cumulative = hist.cumsum(-1)
    last = (cumulative < bins.pixels).sum(-1, keepdim=True)  # the highest occupied level
    step = (bins.pixels - hist.gather(-1, last)) // 255
    below = cumulative - hist
    lut = ((below + step // 2) // step.clamp_min(1)).clamp_max(255)
    lut = torch.where(step == 0, bins.levels, lut)
    return lut.gather(-1, index) / 255
