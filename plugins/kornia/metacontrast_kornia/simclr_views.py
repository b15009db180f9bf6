"""SimCLR's augmentation composition, batched on the device.

random resized crop (+ horizontal flip) -> colour jitter (p=0.8) -> grayscale (p=0.2)
-> Gaussian blur (optional) -> solarize (optional) -> normalise. Parameters are drawn
for all V views of all B images first (``metacontrast_kornia.params``), then applied
(``metacontrast_kornia.ops``); they travel with the views in ``Views.params``.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from metacontrast.imageops import normalize
from metacontrast.interfaces import BuildContext, ViewGenerator
from metacontrast.records import Batch, Views
from metacontrast_kornia import ops, params


def _pair(name: str, value: list[float], low: float = 0.0) -> tuple[float, float]:
    if len(value) != 2 or not (low <= value[0] <= value[1]):
        raise ValueError(f"views.{name} must be [low, high] with {low} <= low <= high, got {value}")
    return float(value[0]), float(value[1])


def _probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"views.{name} must be a probability in [0, 1], got {p}")


@attrs.define
class SimCLRViewsConfig:
    """SimCLR's defaults (ImageNet); for 32-pixel images the paper uses ``strength=0.5``
    and no blur (``configs/views/simclr_cifar.yaml``).

    ``size``: output side (0 = the stored image size). ``crop_scale``/``crop_ratio``:
    area fraction and aspect range of the crop. ``strength``: colour distortion s.
    ``blur_kernel_fraction``: kernel side as a fraction of ``size`` (made odd, >= 3).
    """

    n_views: int = 2
    size: int = 0
    crop_scale: list[float] = attrs.field(factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = attrs.field(factory=lambda: [3 / 4, 4 / 3])
    flip_p: float = 0.5
    jitter_p: float = 0.8
    strength: float = 1.0
    jitter_random_order: bool = True
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: list[float] = attrs.field(factory=lambda: [0.1, 2.0])
    blur_kernel_fraction: float = 0.1
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __attrs_post_init__(self) -> None:
        if self.n_views < 1:
            raise ValueError(f"views.n_views must be >= 1, got {self.n_views}")
        _pair("crop_scale", self.crop_scale)
        _pair("crop_ratio", self.crop_ratio, low=1e-6)
        _pair("blur_sigma", self.blur_sigma, low=1e-6)
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            _probability(name, getattr(self, name))
        if self.strength < 0:
            raise ValueError(f"views.strength must be >= 0, got {self.strength}")


class SimCLRViews(ViewGenerator):
    """``Batch`` uint8 ``(B, C, H, W)`` -> ``Views``: V tensors ``(B, C, S, S)``.

    ``params`` of the views: ``crop (V, B, 4)`` (x0, y0, w, h), ``flip``, ``jitter``,
    ``grayscale``, ``blur``, ``solarize`` ``(V, B)`` booleans, ``jitter_factors (V, B, 4)``,
    ``jitter_order (V, B, 4)`` and ``blur_sigma (V, B)``.
    """

    NAME = "simclr"
    Config = SimCLRViewsConfig

    def __init__(self, config: SimCLRViewsConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.size = config.size or context.image_size
        self.mean, self.std = context.mean, context.std
        self.blur_kernel = self.kernel_for(self.size)

    def kernel_for(self, size: int) -> int:
        """Blur kernel side for views of side ``size`` (odd, >= 3)."""
        k = max(3, round(self.config.blur_kernel_fraction * size))
        return k if k % 2 else k + 1

    def draw(self, batch_size: int, height: int, width: int,
             generator: torch.Generator) -> dict[str, Tensor]:
        """Draw every random parameter for ``V`` views of ``batch_size`` images."""
        c, v, b, dev = self.config, self.config.n_views, batch_size, generator.device
        return {
            "crop": params.crop_boxes(v, b, height, width, tuple(c.crop_scale), tuple(c.crop_ratio),
                                      generator, dev),
            "flip": params.bernoulli(v, b, c.flip_p, generator, dev),
            "jitter": params.bernoulli(v, b, c.jitter_p, generator, dev),
            "jitter_factors": params.jitter_factors(v, b, c.strength, generator, dev),
            "jitter_order": params.jitter_order(v, b, generator, dev, c.jitter_random_order),
            "grayscale": params.bernoulli(v, b, c.grayscale_p, generator, dev),
            "blur": params.bernoulli(v, b, c.blur_p, generator, dev),
            "blur_sigma": params.uniform((v, b), c.blur_sigma[0], c.blur_sigma[1], generator, dev),
            "solarize": params.bernoulli(v, b, c.solarize_p, generator, dev),
        }

    def apply(self, images: Tensor, p: dict[str, Tensor], v: int, size: int = 0) -> Tensor:
        """View ``v`` of uint8 ``images (B, C, H, W)`` under parameters ``p`` -> float
        ``(B, C, S, S)`` in [0, 1] (before normalisation); ``size`` overrides S."""
        size = size or self.size
        x = images.float().div_(255.0)
        x = ops.crop_resize_flip(x, p["crop"][v], p["flip"][v], size)
        if self.config.jitter_p > 0:
            x = ops.where_rows(p["jitter"][v], ops.color_jitter, x, p["jitter_factors"][v],
                               p["jitter_order"][v])
        if x.shape[1] == 3:
            gray = p["grayscale"][v].view(-1, 1, 1, 1)
            x = torch.where(gray, ops.grayscale(x).expand_as(x), x)
        if self.config.blur_p > 0:
            kernel = self.kernel_for(size)
            x = ops.where_rows(p["blur"][v], lambda rows, sigma: ops.gaussian_blur(rows, sigma, kernel),
                               x, p["blur_sigma"][v])
        if self.config.solarize_p > 0:
            flag = p["solarize"][v].view(-1, 1, 1, 1)
            x = torch.where(flag, ops.solarize(x, self.config.solarize_threshold), x)
        return x

    def forward(self, batch: Batch, generator: torch.Generator) -> Views:
        with torch.autocast(batch.images.device.type, enabled=False):  # views stay float32
            return self._views(batch, generator)

    def _views(self, batch: Batch, generator: torch.Generator) -> Views:
        b, _, h, w = batch.images.shape
        p = self.draw(b, h, w, generator)
        views = tuple(normalize(self.apply(batch.images, p, v), self.mean, self.std)
                      for v in range(self.config.n_views))
        return Views(images=views, index=batch.index, params=p)
