"""SimCLR's augmentation composition, batched on the device.

random resized crop (+ horizontal flip) -> colour jitter (p=0.8) -> grayscale (p=0.2)
-> Gaussian blur (optional) -> solarize (optional) -> normalise. Parameters are drawn
for all V views of all B images first (``metacontrast_kornia.params``: one uniform draw),
then applied; they travel with the views in ``Views.params``.

Two ways to apply them, with the same result: on an accelerator every view at once in
few kernels (``metacontrast_kornia.fused``); on the CPU view by view, each operation on
the images that drew it (``apply``, through ``ops.where_rows``), which does less
arithmetic where launches cost nothing. ``ops.selection`` forces either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from metacontrast.imageops import normalize
from metacontrast.interfaces import BuildContext, ViewGenerator
from metacontrast.records import Batch, Views
from metacontrast_kornia import fused, ops, params
from metacontrast_kornia.canvas import Canvas


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
        self.spec = self.view_spec()
        self._fused = False  # always the fused path (set when compiled)
        self._views: Callable[[Batch, Tensor], Views] = self.views_from_uniforms

    def kernel_for(self, size: int) -> int:
        """Blur kernel side for views of side ``size`` (odd, >= 3)."""
        k = max(3, round(self.config.blur_kernel_fraction * size))
        return k if k % 2 else k + 1

    def view_spec(self, n_views: int | None = None) -> params.ViewSpec:
        """The drawing settings of this generator's views (``n_views`` of them)."""
        c = self.config
        n = c.n_views if n_views is None else n_views
        flags = (c.flip_p, c.jitter_p, c.grayscale_p, c.blur_p, c.solarize_p)
        return params.ViewSpec(crop_scale=((c.crop_scale[0], c.crop_scale[1]),) * n,
                               crop_ratio=((c.crop_ratio[0], c.crop_ratio[1]),) * n,
                               probabilities=(flags,) * n, strength=(c.strength,) * n,
                               blur_sigma=((c.blur_sigma[0], c.blur_sigma[1]),) * n,
                               random_order=c.jitter_random_order)

    def draw(self, batch_size: int, height: int, width: int,
             generator: torch.Generator) -> dict[str, Tensor]:
        """Draw every random parameter for ``V`` views of ``batch_size`` images (one
        ``torch.rand`` call, see ``params.derive``)."""
        return params.derive(self.uniforms(batch_size, generator), self.spec, height, width)

    def uniforms(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """All of a step's randomness: ``(V, B, params.COLUMNS)`` uniforms."""
        return torch.rand((self.config.n_views, batch_size, params.COLUMNS), generator=generator,
                          device=generator.device)

    def apply(self, images: Tensor, p: dict[str, Tensor], v: int, size: int = 0) -> Tensor:
        """View ``v`` of uint8 ``images (B, C, H, W)`` under parameters ``p`` -> float
        ``(B, C, S, S)`` in [0, 1] (before normalisation); ``size`` overrides S. One view,
        one operation at a time on the images that drew it (``ops.where_rows``)."""
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

    def render(self, images: Tensor, p: dict[str, Tensor], sizes: tuple[int, ...]) -> Canvas:
        """Every view of uint8 ``images (B, C, H, W)`` under parameters ``p`` at once, view
        ``v`` of side ``sizes[v]``: a float ``Canvas`` in [0, 1] before normalisation, in
        the few kernels of ``metacontrast_kornia.fused``."""
        c = self.config
        return fused.render(images, p, sizes, jitter=c.jitter_p > 0,
                            blur_kernels=tuple(self.kernel_for(s) for s in sizes) if c.blur_p > 0 else None,
                            solarize_threshold=c.solarize_threshold if c.solarize_p > 0 else None)

    def forward(self, batch: Batch, generator: torch.Generator) -> Views:
        with torch.autocast(batch.images.device.type, enabled=False):  # views stay float32
            return self._views(batch, self.uniforms(batch.images.shape[0], generator))

    def views_from_uniforms(self, batch: Batch, u: Tensor) -> Views:
        """The views of ``batch`` from the step's uniforms ``u (V, B, params.COLUMNS)``."""
        _, _, h, w = batch.images.shape
        p = params.derive(u, self.spec, h, w)
        if self._fused or ops.masks_rows(batch.images.device):
            canvas = self.render(batch.images, p, (self.size,) * self.config.n_views)
            views = fused.normalize(canvas, self.mean, self.std).views()
        else:
            views = tuple(normalize(self.apply(batch.images, p, v), self.mean, self.std)
                          for v in range(self.config.n_views))
        return Views(images=views, index=batch.index, params=p)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` the views after the draw (the fused path, one graph); the
        draw itself (``torch.rand`` on the step's generator) stays eager."""
        self._fused = True
        self._views = torch.compile(self.views_from_uniforms, *args, **kwargs)
