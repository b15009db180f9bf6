"""CLSA's views: weak views (MoCo v2's augmentations) and strong views (a random resized
crop, then rounds of Table 1's operations), all batched on the device.

Views ``0 .. n_weak - 1`` are weak; the following ones are strong, one per entry of
``strong_sizes`` (CLSA-single: one 96-pixel crop at ImageNet scale; CLSA-multi: 224,
192, 160, 128 and 96). Parameters of every view travel in ``Views.params`` with leading
dims ``(V, B)``: the SimCLR-style ones of ``simclr_views`` plus ``strong_op``,
``strong_apply`` and ``strong_magnitude`` ``(V, B, rounds)`` (never applied on weak views).
As for SimCLR's views, an accelerator makes every view at once in few kernels
(``strong_fused``), the CPU view by view on the images that drew each operation.
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
from metacontrast_kornia import fused, ops, params, strong_fused, strong_ops
from metacontrast_kornia.canvas import Canvas
from metacontrast_kornia.simclr_views import SimCLRViews, SimCLRViewsConfig, _pair, _probability


def _moco_v2_weak() -> SimCLRViewsConfig:
    return SimCLRViewsConfig(n_views=2, crop_scale=[0.2, 1.0], strength=0.5, blur_p=0.5)


@attrs.define
class WeakStrongViewsConfig:
    """``weak``: the weak views' settings (those of ``views=simclr``; MoCo v2's by default).
    ``strong_sizes``: side of each strong view (0: the stored size). ``strong_crop_scale``:
    area range of the strong views' crops. ``strong_colour``: apply the weak colour
    distortion (jitter, grayscale, blur) before the strong operations (the paper leaves
    this open; false gives crop, flip and the operations only). ``rounds``: operations
    drawn per image (5), each applied with probability ``op_p`` (0.5). ``fill``: grey level
    of pixels uncovered by geometric operations."""

    weak: SimCLRViewsConfig = attrs.field(factory=_moco_v2_weak)
    strong_sizes: list[int] = attrs.field(factory=lambda: [96])
    strong_crop_scale: list[float] = attrs.field(factory=lambda: [0.2, 1.0])
    strong_colour: bool = True
    rounds: int = 5
    op_p: float = 0.5
    fill: float = 0.5

    def __attrs_post_init__(self) -> None:
        if not self.strong_sizes or min(self.strong_sizes) < 0:
            raise ValueError(f"views.strong_sizes must list sizes >= 0, got {self.strong_sizes}")
        _pair("strong_crop_scale", self.strong_crop_scale)
        _probability("op_p", self.op_p)
        if self.rounds < 0:
            raise ValueError(f"views.rounds must be >= 0, got {self.rounds}")
        if not 0.0 <= self.fill <= 1.0:
            raise ValueError(f"views.fill must be in [0, 1], got {self.fill}")


class WeakStrongViews(ViewGenerator):
    """``Batch`` uint8 ``(B, C, H, W)`` -> ``Views``: ``weak.n_views`` weak views of the
    weak size, then one strong view per ``strong_sizes`` entry."""

    NAME = "weak_strong"
    Config = WeakStrongViewsConfig

    def __init__(self, config: WeakStrongViewsConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.weak = SimCLRViews(config.weak, context)
        no_colour = {} if config.strong_colour else {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0,
                                                    "solarize_p": 0.0}
        strong = attrs.evolve(config.weak, n_views=len(config.strong_sizes),
                              crop_scale=list(config.strong_crop_scale), **no_colour)
        self.strong = SimCLRViews(strong, context)
        self.strong_sizes = [s or context.image_size for s in config.strong_sizes]
        self.mean, self.std = context.mean, context.std
        self.spec = self.weak.view_spec() + self.strong.view_spec(len(self.strong_sizes))
        self._fused = False  # always the fused path (set when compiled)
        self._views: Callable[[Batch, Tensor], Views] = self.views_from_uniforms

    @property
    def n_weak(self) -> int:
        return self.config.weak.n_views

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Every random parameter of the weak and strong views, ``(V, B, ...)``, from one
        uniform draw (``parameters_from``)."""
        return self.parameters_from(self.uniforms(batch_size, generator), height, width)

    def uniforms(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """All of a step's randomness: ``(V, B, params.COLUMNS + 3 * rounds)`` uniforms."""
        v = self.n_weak + len(self.strong_sizes)
        return torch.rand((v, batch_size, params.COLUMNS + 3 * self.config.rounds), generator=generator,
                          device=generator.device)

    def parameters_from(self, u: Tensor, height: int, width: int) -> dict[str, Tensor]:
        """SimCLR's parameters of every view (``params.derive``) and, per round, an
        operation (uniform over the 14), whether it applies (``op_p``, strong views only)
        and its magnitude, from uniforms ``u (V, B, params.COLUMNS + 3 * rounds)``."""
        n_strong, r = len(self.strong_sizes), self.config.rounds
        v, batch_size = u.shape[:2]
        p = params.derive(u[..., :params.COLUMNS], self.spec, height, width)
        draws = u[..., params.COLUMNS:].view(v, batch_size, r, 3)
        op = (draws[..., 0] * len(strong_ops.OPS)).long().clamp_(max=len(strong_ops.OPS) - 1)
        strong = ops.constant((0.0,) * self.n_weak + (1.0,) * n_strong, u.device, torch.bool).view(v, 1, 1)
        p["strong_op"] = op
        p["strong_apply"] = (draws[..., 1] < self.config.op_p) & strong
        p["strong_magnitude"] = strong_ops.magnitudes(op, draws[..., 2])
        return p

    def apply(self, images: Tensor, p: dict[str, Tensor], v: int) -> Tensor:
        """View ``v`` under parameters ``p`` -> float ``(B, C, S_v, S_v)`` in [0, 1], one
        operation at a time on the images that drew it (``ops.where_rows``)."""
        if v < self.n_weak:
            return self.weak.apply(images, p, v)
        x = self.strong.apply(images, p, v, size=self.strong_sizes[v - self.n_weak])
        return strong_ops.strong_augment(x, p["strong_op"][v], p["strong_apply"][v], p["strong_magnitude"][v],
                                         self.config.fill)

    def render(self, images: Tensor, p: dict[str, Tensor]) -> tuple[Canvas, Canvas]:
        """Every view at once in few kernels (``metacontrast_kornia.fused``,
        ``strong_fused``): the weak views' canvas and the strong views' (after their rounds),
        in [0, 1], not normalised."""
        weak, strong = self.weak.config, self.strong.config
        sizes = (self.weak.size,) * self.n_weak + tuple(self.strong_sizes)
        kernels = tuple(self.weak.kernel_for(s) for s in sizes)
        blur = weak.blur_p > 0 or strong.blur_p > 0
        solarize = weak.solarize_p > 0 or strong.solarize_p > 0
        canvas = fused.render(images, p, sizes, jitter=weak.jitter_p > 0 or strong.jitter_p > 0,
                              blur_kernels=kernels if blur else None,
                              solarize_threshold=weak.solarize_threshold if solarize else None)
        strong_canvas = canvas.rows(self.n_weak, len(sizes))
        if self.config.rounds > 0:
            rows = slice(self.n_weak, None)
            plan = strong_fused.round_plan(p["strong_op"][rows], p["strong_apply"][rows],
                                           p["strong_magnitude"][rows], strong_canvas.sizes,
                                           strong_canvas.side, self.config.fill)
            strong_canvas = strong_fused.strong_rounds(strong_canvas, plan)
        return canvas.rows(0, self.n_weak), strong_canvas

    def forward(self, batch: Batch, generator: torch.Generator) -> Views:
        with torch.autocast(batch.images.device.type, enabled=False):  # views stay float32
            return self._views(batch, self.uniforms(batch.images.shape[0], generator))

    def views_from_uniforms(self, batch: Batch, u: Tensor) -> Views:
        """The views of ``batch`` from the step's uniforms ``u (V, B, params.COLUMNS + 3 *
        rounds)``."""
        _, _, h, w = batch.images.shape
        p = self.parameters_from(u, h, w)
        if self._fused or ops.masks_rows(batch.images.device):
            canvases = self.render(batch.images, p)
            views = tuple(v for c in canvases for v in fused.normalize(c, self.mean, self.std).views())
        else:
            n_views = self.n_weak + len(self.strong_sizes)
            views = tuple(normalize(self.apply(batch.images, p, v), self.mean, self.std)
                          for v in range(n_views))
        return Views(images=views, index=batch.index, params=p)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` the views after the draw (the fused path, one graph); the
        draw itself (``torch.rand`` on the step's generator) stays eager."""
        self._fused = True
        self._views = torch.compile(self.views_from_uniforms, *args, **kwargs)
