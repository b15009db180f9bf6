"""Drawing the random parameters of SimCLR's augmentations, separately from applying them.

All of a step's randomness comes from one ``torch.rand`` call on the step's generator,
``(V, B, COLUMNS)`` uniforms, turned into parameters by ``derive``: one launch for the
draw and a few for the arithmetic, whatever the number of views. Every tensor has leading
dims ``(V, B)``, so a view can be replayed from its parameters. ``ViewSpec`` holds the
per-view settings (views of one generator may differ: CLSA's weak and strong views).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from metacontrast_kornia.ops import constant

CROP_ATTEMPTS = 10
FLAGS = ("flip", "jitter", "grayscale", "blur", "solarize")
# uniform columns of one view-sample, in order
CROP_TRIES = slice(0, 2 * CROP_ATTEMPTS)  # (area, log aspect) per try
CROP_POSITION = slice(2 * CROP_ATTEMPTS, 2 * CROP_ATTEMPTS + 2)  # x0, y0
FLAG_COLUMNS = slice(CROP_POSITION.stop, CROP_POSITION.stop + len(FLAGS))
AMOUNTS = slice(FLAG_COLUMNS.stop, FLAG_COLUMNS.stop + 5)  # 3 jitter factors, hue shift, blur sigma
ORDER_KEYS = slice(AMOUNTS.stop, AMOUNTS.stop + 4)
COLUMNS = ORDER_KEYS.stop


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """The drawing settings of each of V views (tuples of length V).

    ``crop_scale``, ``crop_ratio``: ``(low, high)`` area fraction and aspect range.
    ``probabilities``: per view, the probabilities of ``FLAGS``. ``strength``: SimCLR's
    colour distortion s (factors ``U(max(0, 1 - 0.8s), 1 + 0.8s)``, hue ``U(-0.2s, 0.2s)``).
    ``blur_sigma``: ``(low, high)``. ``random_order``: jitter operations in a random order
    per view-sample (else brightness, contrast, saturation, hue)."""

    crop_scale: tuple[tuple[float, float], ...]
    crop_ratio: tuple[tuple[float, float], ...]
    probabilities: tuple[tuple[float, ...], ...]
    strength: tuple[float, ...]
    blur_sigma: tuple[tuple[float, float], ...]
    random_order: bool = True

    @property
    def n_views(self) -> int:
        return len(self.crop_scale)

    def __add__(self, other: ViewSpec) -> ViewSpec:
        """The views of ``self`` followed by those of ``other``."""
        if self.random_order != other.random_order:
            raise ValueError("views drawn together must agree on jitter_random_order")
        return ViewSpec(self.crop_scale + other.crop_scale, self.crop_ratio + other.crop_ratio,
                        self.probabilities + other.probabilities, self.strength + other.strength,
                        self.blur_sigma + other.blur_sigma, self.random_order)


def _per_view(values: list[tuple[float, ...]], device: torch.device, dims: int) -> Tensor:
    """A constant ``(V, 1, ..., k)`` tensor of per-view values (``dims`` leading dims in all)."""
    v, k = len(values), len(values[0])
    flat = constant(tuple(x for row in values for x in row), device, torch.float32)
    return flat.view(v, *([1] * (dims - 2)), k)


def crop_boxes_from(u: Tensor, height: int, width: int, scale: list[tuple[float, float]],
                    ratio: list[tuple[float, float]]) -> Tensor:
    """Random resized crop boxes ``(V, B, 4)`` as integer-valued ``(x0, y0, w, h)`` from
    uniforms ``u (V, B, 2 * CROP_ATTEMPTS + 2)`` and per-view ``scale``/``ratio`` ranges.

    As torchvision's RandomResizedCrop: up to 10 tries of area fraction ``U(scale)`` and
    log-uniform aspect ratio; the first that fits is kept; otherwise a centre crop with
    the aspect ratio clamped to ``ratio``. Every try is evaluated at once."""
    v, b = u.shape[:2]
    dev = u.device
    tries = u[..., CROP_TRIES].view(v, b, CROP_ATTEMPTS, 2)  # (area, log aspect)
    area_log = [(height * width * s0, math.log(r0)) for (s0, _), (r0, _) in zip(scale, ratio, strict=True)]
    span = [(height * width * (s1 - s0), math.log(r1) - math.log(r0))
            for (s0, s1), (r0, r1) in zip(scale, ratio, strict=True)]
    drawn = torch.addcmul(_per_view(area_log, dev, 4), tries, _per_view(span, dev, 4))
    area, log_r = drawn.unbind(-1)  # (V, B, A)
    wh = (area[..., None] * (log_r[..., None] * constant((1.0, -1.0), dev, u.dtype)).exp()).sqrt().round()
    limits = constant((float(width), float(height)), dev, u.dtype)
    fits = ((wh >= 1) & (wh <= limits)).all(-1)  # (V, B, A)
    first = fits.to(torch.uint8).argmax(-1)  # the first try that fits (0 when none does)
    wh = wh.gather(2, first[..., None, None].expand(v, b, 1, 2)).squeeze(2)  # (V, B, 2)
    fallback = [_centre_crop(height, width, r) for r in ratio]
    found = fits.any(-1, keepdim=True)
    wh = torch.where(found, wh, _per_view([f[2:] for f in fallback], dev, 3))
    xy = torch.floor(u[..., CROP_POSITION] * (limits + 1 - wh))
    xy = torch.minimum(xy, limits - wh)
    xy = torch.where(found, xy, _per_view([f[:2] for f in fallback], dev, 3))
    return torch.cat([xy, wh], dim=-1)


def _centre_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float, float, float]:
    """torchvision's fallback: the whole image, aspect clamped into ``ratio``, centred."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return float((width - w) // 2), float((height - h) // 2), float(w), float(h)


def crop_boxes(v: int, b: int, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float], generator: torch.Generator, device: torch.device) -> Tensor:
    """``crop_boxes_from`` fresh draws: ``(V, B, 4)`` boxes, one setting for every view."""
    u = torch.rand((v, b, CROP_POSITION.stop), generator=generator, device=device)
    return crop_boxes_from(u, height, width, [scale] * v, [ratio] * v)


def derive(u: Tensor, spec: ViewSpec, height: int, width: int) -> dict[str, Tensor]:
    """SimCLR's parameters of ``V`` views of ``B`` images from uniforms ``u (V, B, COLUMNS)``:
    ``crop (V, B, 4)`` (x0, y0, w, h), the booleans ``flip``, ``jitter``, ``grayscale``,
    ``blur``, ``solarize`` ``(V, B)``, ``jitter_factors (V, B, 4)`` (brightness,
    contrast, saturation, hue shift as a fraction of the colour circle),
    ``jitter_order (V, B, 4)`` (a permutation of 0..3) and ``blur_sigma (V, B)``."""
    dev = u.device
    flags = u[..., FLAG_COLUMNS] < _per_view(list(spec.probabilities), dev, 3)
    low, span = [], []
    for s, (sigma_low, sigma_high) in zip(spec.strength, spec.blur_sigma, strict=True):
        f_low, f_high = max(0.0, 1 - 0.8 * s), 1 + 0.8 * s
        low.append((f_low,) * 3 + (-0.2 * s, sigma_low))
        span.append((f_high - f_low,) * 3 + (0.4 * s, sigma_high - sigma_low))
    amounts = torch.addcmul(_per_view(low, dev, 3), u[..., AMOUNTS], _per_view(span, dev, 3))
    if spec.random_order:
        order = u[..., ORDER_KEYS].argsort(dim=-1)
    else:
        order = torch.arange(4, device=dev).expand(*u.shape[:2], 4)
    p = {"crop": crop_boxes_from(u, height, width, list(spec.crop_scale), list(spec.crop_ratio))}
    p.update({name: flags[..., i] for i, name in enumerate(FLAGS)})
    p.update({"jitter_factors": amounts[..., :4], "jitter_order": order, "blur_sigma": amounts[..., 4]})
    return p

