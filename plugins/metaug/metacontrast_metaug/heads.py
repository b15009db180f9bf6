"""``split_projection``: one projection head per channel view (MetAug's ``g_vartheta_j``)."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacontrast.interfaces import BuildContext, Head


@attrs.define
class SplitProjectionConfig:
    """``hidden_dims``: widths of the hidden layers (Linear, BatchNorm, ReLU) of each view's
    head (``[]``: one linear layer; the ``conv`` AlexNet variant puts the two fully
    connected layers here). ``out_dim``: each view's projection width (128).
    ``normalize``: L2-normalise each view's projection (CMC, MetAug)."""

    hidden_dims: list[int] = attrs.field(factory=list)
    out_dim: int = 128
    normalize: bool = True

    def __attrs_post_init__(self) -> None:
        if self.out_dim < 1 or any(d < 1 for d in self.hidden_dims):
            raise ValueError(f"out_dim and hidden_dims must be >= 1, got {self.out_dim} and "
                             f"{self.hidden_dims}")


class SplitProjection(Head):
    """``h (N, M * D_v)`` -> ``z (N, M * out_dim)``: part ``j`` of ``h`` through head ``j``.
    ``M`` is the encoder's ``parts`` (``BuildContext.encoder_parts``)."""

    NAME = "split_projection"
    Config = SplitProjectionConfig

    def __init__(self, config: SplitProjectionConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.parts = context.encoder_parts
        if context.encoder_dim % self.parts:
            raise ValueError(f"head: the encoder's {context.encoder_dim} features do not split into "
                             f"{self.parts} equal parts")
        d_in = context.encoder_dim // self.parts
        self.heads = nn.ModuleList()
        for _ in range(self.parts):
            layers: list[nn.Module] = []
            d = d_in
            for width in config.hidden_dims:
                layers += [nn.Linear(d, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
                d = width
            layers.append(nn.Linear(d, config.out_dim))
            self.heads.append(nn.Sequential(*layers))
        self.out_dim = config.out_dim * self.parts

    def forward(self, h: Tensor) -> Tensor:
        chunks = h.chunk(self.parts, dim=1)
        z = [head(c) for head, c in zip(self.heads, chunks, strict=True)]
        if self.config.normalize:
            z = [F.normalize(p, dim=1) for p in z]
        return torch.cat(z, dim=1)
