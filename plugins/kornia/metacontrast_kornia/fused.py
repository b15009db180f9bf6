"""SimCLR's augmentation composition for all views at once, in few device operations.

The same pipeline as ``SimCLRViews.apply`` view by view (crop + flip -> colour jitter ->
grayscale -> blur -> solarize), written for an accelerator: every view of every size in
one ``Canvas``, every random choice applied arithmetically (a factor of 1, a mask) rather
than by selecting rows, so the number of kernels does not depend on the data, the number
of views or the batch, and nothing waits for the device.

- crop, resize and flip of every view: one ``grid_sample``;
- brightness, contrast and saturation: each is ``clamp(a x + c_m mean(g) + c_g g)`` with
  per-image ``a``, ``c_m``, ``c_g`` (``g`` the grey image), so a jitter stage is one
  formula whatever operation each image drew there; hue rotation, which does not fit it,
  runs once per image between the stages before and after it in the image's order (6
  affine stages and one hue rotation instead of 4 stages of 4 operations);
- hue rotation in closed form on RGB (the HSV rotation torchvision and kornia do through
  an HSV round trip): ``out_c = max - chroma * clamp(min(k_c, 4 - k_c), 0, 1)``,
  ``k_c = (n_c + 6 h') mod 6``, ``n = (5, 3, 1)``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast_kornia.canvas import Canvas, constants
from metacontrast_kornia.ops import constant, gaussian_blur

GREY = (0.299, 0.587, 0.114)  # ITU-R 601, as kornia's rgb_to_grayscale
# hue: (x_next - x_prev) for each channel as the one that holds the maximum (R: G - B, G: B - R, B: R - G)
HUE_DIFFERENCE = (0.0, 1.0, -1.0, -1.0, 0.0, 1.0, 1.0, -1.0, 0.0)


def render(images: Tensor, p: dict[str, Tensor], sizes: tuple[int, ...], *, jitter: bool = True,
           blur_kernels: tuple[int, ...] | None = None, solarize_threshold: float | None = None) -> Canvas:
    """SimCLR's pipeline for every view of uint8 ``images (B, C, H, W)`` under parameters
    ``p`` (``params.derive``), view ``v`` of side ``sizes[v]``: a float ``Canvas`` in
    [0, 1], not normalised. ``jitter``: whether any view may be jittered; ``blur_kernels``:
    each view's blur kernel side (``None``: no blur); ``solarize_threshold`` (``None``: no
    solarisation)."""
    canvas = crop_resize_flip(images, p["crop"], p["flip"], sizes)
    if jitter:
        canvas = color_jitter(canvas, jitter_plan(p["jitter_factors"], p["jitter_order"], p["jitter"]))
    canvas = grayscale(canvas, p["grayscale"])
    if blur_kernels is not None:
        canvas = blur(canvas, p["blur"], p["blur_sigma"], blur_kernels)
    if solarize_threshold is not None:
        canvas = solarize(canvas, p["solarize"], solarize_threshold)
    return canvas


def crop_resize_flip(images: Tensor, boxes: Tensor, flip: Tensor, sizes: tuple[int, ...]) -> Canvas:
    """uint8 ``images (B, C, H, W)``, ``boxes (V, B, 4)`` (x0, y0, w, h), ``flip (V, B)`` ->
    a float ``Canvas`` in [0, 1]: view ``v`` is each box resized to ``sizes[v]``
    (bilinear, corners aligned: output pixel ``j`` samples ``x0 + j (w - 1) / (size - 1)``),
    mirrored where ``flip``. One ``grid_sample`` for every view."""
    v, b = boxes.shape[:2]
    _, c, height, width = images.shape
    side, dev = max(sizes), images.device
    k = constants(sizes, side, dev)
    starts = boxes[..., :2]
    ends = boxes[..., :2] + boxes[..., 2:] - 1
    mirrored = flip[..., None] & constant((True, False), dev, torch.bool)  # flip x only
    a, e = torch.where(mirrored, ends, starts), torch.where(mirrored, starts, ends)
    scale = constant((2 / max(width - 1, 1), 2 / max(height - 1, 1)), dev, torch.float32)
    a = torch.addcmul(constant((-1.0, -1.0), dev, torch.float32), a, scale)
    e = torch.addcmul(constant((-1.0, -1.0), dev, torch.float32), e, scale)
    coords = torch.addcmul(a[..., None], (e - a)[..., None], k.steps)  # (V, B, 2, S): x then y
    if min(sizes) != side:  # beyond a view's side: sample outside the image (zeros)
        coords = torch.where(k.valid_axis, coords, -3.0)
    gx = coords[:, :, 0, None, :].expand(v, b, side, side)
    gy = coords[:, :, 1, :, None].expand(v, b, side, side)
    grid = torch.stack([gx, gy], dim=-1).view(v * b, side, side, 2)
    source = torch.div(images.expand(v, *images.shape), 255.0).view(v * b, c, height, width)
    x = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return Canvas(x.view(v, b, c, side, side), sizes)


def grey(x: Tensor) -> Tensor:
    """``(..., 3, P) -> (..., 1, P)`` with ITU-R 601 weights; identity for one channel."""
    if x.shape[-2] == 1:
        return x
    return constant(GREY, x.device, x.dtype).view(1, 3) @ x


def hue_rotate(x: Tensor, shift6: Tensor) -> Tensor:
    """Rotate the HSV hue of RGB pixels ``x (..., 3, P)`` in [0, 1] by ``shift6 (..., 1, 1)``
    sixths of the colour circle (``6 * shift``)."""
    low, high = torch.aminmax(x, dim=-2, keepdim=True)  # (..., 1, P)
    chroma = high - low
    difference = constant(HUE_DIFFERENCE, x.device, x.dtype).view(3, 3) @ x  # (..., 3, P)
    top = x.argmax(dim=-2, keepdim=True)  # R, then G, then B on ties (as torchvision)
    hue6 = torch.add(shift6, top, alpha=2)  # sector offset 0, 2, 4 of the maximum's channel, + shift
    hue6 = torch.addcdiv(hue6, difference.gather(-2, top), chroma.clamp_min(1e-12))
    k = torch.remainder(hue6 + constant((5.0, 3.0, 1.0), x.device, x.dtype).view(3, 1), 6.0)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return torch.addcmul(high, chroma, ramp, value=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class JitterPlan:
    """Per-image coefficients of the 6 affine jitter stages (3 before the image's hue
    rotation, 3 after; an image with fewer operations there has identity stages):
    ``a``, ``c_mean``, ``c_grey`` ``(V, B, 6)``; ``shift6 (V, B)``: the hue rotation in
    sixths; ``on (V, B)``: whether the image is jittered at all."""

    a: Tensor
    c_mean: Tensor
    c_grey: Tensor
    shift6: Tensor
    on: Tensor


# slot j of the 6 reads order position BASE[j] + AFTER_HUE[j] * (position of hue)
_BASE = (0, 1, 2, 1, 2, 3)
_AFTER_HUE = (0, 0, 0, 1, 1, 1)


def jitter_plan(factors: Tensor, order: Tensor, on: Tensor) -> JitterPlan:
    """``factors (V, B, 4)`` (brightness, contrast, saturation, hue shift), ``order (V, B,
    4)`` (a permutation of 0..3: the operation at each position), ``on (V, B)``."""
    dev = factors.device
    hue_at = (order == 3).to(torch.uint8).argmax(-1, keepdim=True)  # (V, B, 1)
    after = constant(_AFTER_HUE, dev, torch.long)
    position = constant(_BASE, dev, torch.long) + after * hue_at  # (V, B, 6)
    bound = torch.where(constant(_AFTER_HUE, dev, torch.bool), 4, hue_at)
    used = (position < bound) & on[..., None]
    op = order.gather(-1, position.clamp(max=3))
    factor = factors.gather(-1, op)
    blend = (op[..., None] == constant((1, 2), dev, torch.long)) & used[..., None]
    coefficients = (1 - factor)[..., None] * blend  # (V, B, 6, 2): contrast's mean, saturation's grey
    return JitterPlan(a=torch.where(used, factor, 1.0), c_mean=coefficients[..., 0],
                      c_grey=coefficients[..., 1], shift6=factors[..., 3] * 6, on=on)


def affine_colour(flat: Tensor, a: Tensor, c_mean: Tensor, c_grey: Tensor, valid: Tensor | None) -> Tensor:
    """``clamp(a x + c_mean mean(grey x) + c_grey grey(x), 0, 1)`` of ``flat (V, B, C, P)``
    with per-image ``a``, ``c_mean`` (already divided by the view's pixel count),
    ``c_grey`` ``(V, B, 1, 1)``; ``valid (V, 1, 1, P)`` keeps the padding at 0."""
    g = grey(flat)
    mean_term = g.sum(-1, keepdim=True) * c_mean
    if valid is not None:
        mean_term = mean_term * valid
    return torch.addcmul(torch.addcmul(mean_term, c_grey, g), a, flat).clamp_(0, 1)


def color_jitter(canvas: Canvas, plan: JitterPlan) -> Canvas:
    """SimCLR's colour jitter of every view of ``canvas`` under ``plan``."""
    flat = canvas.flat
    k = canvas.constants()
    valid = k.valid if canvas.mixed else None
    c_mean = plan.c_mean / k.pixels[..., None]
    for stage in range(6):
        if stage == 3 and flat.shape[-2] == 3:
            rotated = hue_rotate(flat, plan.shift6[..., None, None])
            flat = torch.where(plan.on[..., None, None], rotated, flat)
        coefficients = (t[..., stage, None, None] for t in (plan.a, c_mean, plan.c_grey))
        flat = affine_colour(flat, *coefficients, valid)
    return canvas.with_flat(flat)


def grayscale(canvas: Canvas, flag: Tensor) -> Canvas:
    """Grey (3 equal channels) where ``flag (V, B)``; one-channel views are unchanged."""
    flat = canvas.flat
    if flat.shape[-2] == 1:
        return canvas
    return canvas.with_flat(torch.where(flag[..., None, None], grey(flat), flat))


def blur(canvas: Canvas, flag: Tensor, sigma: Tensor, kernels: tuple[int, ...]) -> Canvas:
    """Gaussian blur with per-image ``sigma (V, B)`` where ``flag (V, B)``, kernel side
    ``kernels[v]`` and reflect padding at each view's own border: one pass per run of
    consecutive views of one size and kernel."""
    x = canvas.x
    runs: list[list[int]] = []  # [first, last, size, kernel]
    for v, (size, kernel) in enumerate(zip(canvas.sizes, kernels, strict=True)):
        if runs and runs[-1][2:] == [size, kernel]:
            runs[-1][1] = v + 1
        else:
            runs.append([v, v + 1, size, kernel])
    if len(runs) == 1 and not canvas.mixed:  # one pass over the whole canvas, no copy
        v, b = x.shape[:2]
        out = _blur_rows(x.view(v * b, *x.shape[2:]), flag.reshape(-1), sigma.reshape(-1), kernels[0])
        return Canvas(out.view(x.shape), canvas.sizes)
    out = x.clone()
    for first, last, size, kernel in runs:
        rows = x[first:last, :, :, :size, :size]
        n, b = rows.shape[:2]
        blurred = _blur_rows(rows.reshape(n * b, *rows.shape[2:]), flag[first:last].reshape(-1),
                             sigma[first:last].reshape(-1), kernel)
        out[first:last, :, :, :size, :size] = blurred.view(rows.shape)
    return Canvas(out, canvas.sizes)


def _blur_rows(x: Tensor, flag: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    return torch.where(flag.view(-1, 1, 1, 1), gaussian_blur(x, sigma, kernel), x)


def solarize(canvas: Canvas, flag: Tensor, threshold: float) -> Canvas:
    """Invert the pixels at or above ``threshold`` where ``flag (V, B)``."""
    flat = canvas.flat
    invert = (flat >= threshold) & flag[..., None, None]
    if canvas.mixed:
        invert = invert & canvas.constants().valid_mask
    return canvas.with_flat(torch.where(invert, 1 - flat, flat))


def normalize(canvas: Canvas, mean: tuple[float, ...], std: tuple[float, ...]) -> Canvas:
    """``(x - mean) / std`` per channel, as one multiply-add."""
    dev, c = canvas.x.device, canvas.x.shape[2]
    scale = constant(tuple(1 / s for s in std), dev, torch.float32).view(c, 1)
    shift = constant(tuple(-m / s for m, s in zip(mean, std, strict=True)), dev, torch.float32).view(c, 1)
    return canvas.with_flat(torch.addcmul(shift, canvas.flat, scale))
