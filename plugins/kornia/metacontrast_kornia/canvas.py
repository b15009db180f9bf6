"""All views of a batch in one tensor, whatever their sizes.

A ``Canvas`` holds V views of B images as ``x (V, B, C, S, S)``, ``S`` at least the largest
view side: view ``v`` fills the top-left ``sizes[v] x sizes[v]`` pixels of its rows and
the rest is 0. Every step of the view pipeline then runs once for all views (one kernel per
operation, not one per view), and per-image statistics (means, minima, histograms) read
only each view's own pixels (``valid``, ``pixels``).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor

from metacontrast.device_constants import device_tensor


@dataclasses.dataclass(frozen=True, eq=False)
class CanvasConstants:
    """Per-view constants of a canvas layout on one device.

    ``valid (V, 1, 1, S*S)`` float 1 on a view's own pixels (``valid_mask``: as booleans;
    ``padding_lift``: 2 on the padding, 0 on the pixels, which lifts the padding above any
    value in [0, 1] for a minimum over the view);
    ``valid_axis (V, 1, 1, S)``
    bool, the same along one axis; ``steps (V, 1, 1, S)``: ``j / (size - 1)`` along an axis
    (0 where invalid); ``pixels (V, 1)``: pixels of each view; ``xy (S*S, 3)``: the
    homogeneous pixel coordinates ``(x, y, 1)`` of the canvas, row-major."""

    valid: Tensor
    valid_mask: Tensor
    padding_lift: Tensor
    valid_axis: Tensor
    steps: Tensor
    pixels: Tensor
    xy: Tensor


@functools.lru_cache(maxsize=32)
def constants(sizes: tuple[int, ...], side: int, device: torch.device) -> CanvasConstants:
    """The ``CanvasConstants`` of views of ``sizes`` on a canvas of ``side``, made once,
    on the device (nothing copied from the host: ``device_tensor``)."""
    with torch.inference_mode(False):
        j = torch.arange(side, dtype=torch.float32, device=device)
        size = device_tensor(tuple(float(s) for s in sizes), device, torch.float32)[:, None]
        valid_axis = j[None, :] < size  # (V, S)
        steps = torch.where(valid_axis, j / (size - 1).clamp_min(1), 0.0)
        valid = (valid_axis[:, :, None] & valid_axis[:, None, :]).reshape(len(sizes), 1, 1, side * side)
        ys, xs = torch.meshgrid(j, j, indexing="ij")
        xy = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(side * side, device=device)], dim=1)
        return CanvasConstants(valid=valid.float(), valid_mask=valid, padding_lift=(~valid).float() * 2,
                               valid_axis=valid_axis.view(-1, 1, 1, side), steps=steps.view(-1, 1, 1, side),
                               pixels=(size.squeeze(1) ** 2).view(-1, 1), xy=xy)


@dataclasses.dataclass(frozen=True, eq=False)
class Canvas:
    """V views of B images in one tensor ``x (V, B, C, S, S)`` (see the module)."""

    x: Tensor
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.x.dim() != 5 or self.x.shape[0] != len(self.sizes) or max(self.sizes) > self.x.shape[-1]:
            raise ValueError(f"Canvas: x must be (V={len(self.sizes)}, B, C, S, S) with S >= "
                             f"{max(self.sizes)}, got {tuple(self.x.shape)}")

    @property
    def side(self) -> int:
        return int(self.x.shape[-1])

    @property
    def mixed(self) -> bool:
        """Whether some view is smaller than the canvas (padding present)."""
        return min(self.sizes) != self.side

    def rows(self, start: int, stop: int) -> Canvas:
        """Views ``start .. stop - 1`` on a canvas of their own largest side (a copy when
        that is smaller than this canvas' side)."""
        sizes = self.sizes[start:stop]
        side = max(sizes)
        x = self.x[start:stop]
        if side < self.side:
            x = x[..., :side, :side].contiguous()
        return Canvas(x, sizes)

    @property
    def flat(self) -> Tensor:
        """``x`` as ``(V, B, C, S*S)`` (a view)."""
        v, b, c = self.x.shape[:3]
        return self.x.reshape(v, b, c, self.side * self.side)

    def constants(self) -> CanvasConstants:
        return constants(self.sizes, self.side, self.x.device)

    def with_flat(self, flat: Tensor) -> Canvas:
        """The same layout holding ``flat (V, B, C, S*S)``."""
        return Canvas(flat.reshape(self.x.shape), self.sizes)

    def view(self, v: int) -> Tensor:
        """View ``v``: ``(B, C, size_v, size_v)`` (a slice of the canvas)."""
        s = self.sizes[v]
        return self.x[v, :, :, :s, :s]

    def views(self) -> tuple[Tensor, ...]:
        return tuple(self.view(v) for v in range(len(self.sizes)))
