"""The triplet loss with margin (Schroff et al., 2015; CS330's "V1"):

    l(a, p, n) = max(0, d(a, p) - d(a, n) + margin),   d = squared Euclidean distance

on L2-normalised projections (``normalize``), with anchors, positives (the other view of
the image) and negatives (every view of the other images) from a two-view episode.
``mining`` picks the negatives a loss term uses:

- ``all``: every (anchor, negative) triplet, averaged;
- ``hard``: per anchor the closest negative;
- ``semi_hard`` (FaceNet; SimCLR's Table 4 "sh"): per anchor the closest negative that is
  farther than the positive, ``d(a, n) > d(a, p)``; where no negative is, the farthest
  negative (the least hard of those closer than the positive).

The selection takes no gradient; the loss of the selected triplets does. The result is
the mean over anchors (over triplets for ``all``).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from metacontrast.interfaces import BuildContext, Loss
from metacontrast.records import LossInputs
from metacontrast_classic.pairs import PairRows, two_view_rows

MINING = ("all", "hard", "semi_hard")


def triplet_loss(rows: PairRows, margin: float, mining: str) -> Tensor:
    """0-dim triplet loss of ``rows`` (see the module docstring)."""
    d = torch.cdist(rows.anchors, rows.candidates).pow(2)  # (2B, 2n)
    arange = torch.arange(d.shape[0], device=d.device)
    d_ap = d[arange, rows.positive]  # (2B,)
    negative = rows.negative_mask
    if mining == "all":
        hinge = (d_ap[:, None] - d + margin).clamp_min(0)
        return hinge[negative].mean()
    inf = torch.finfo(d.dtype).max
    with torch.no_grad():
        if mining == "hard":
            chosen = d.masked_fill(~negative, inf).argmin(dim=1)
        else:
            farther = negative & (d > d_ap[:, None])
            closest_farther = d.masked_fill(~farther, inf).argmin(dim=1)
            farthest = d.masked_fill(~negative, -inf).argmax(dim=1)
            chosen = torch.where(farther.any(dim=1), closest_farther, farthest)
    return (d_ap - d[arange, chosen] + margin).clamp_min(0).mean()


@attrs.define
class TripletConfig:
    """``margin`` (on squared distances of unit vectors, which lie in [0, 4]); ``mining``:
    all | hard | semi_hard; ``normalize``: L2-normalise the projections first; ``gather``:
    negatives from every rank under DDP."""

    margin: float = 0.5
    mining: str = "semi_hard"
    normalize: bool = True
    gather: bool = True

    def __attrs_post_init__(self) -> None:
        if self.margin < 0:
            raise ValueError(f"margin: must be >= 0, got {self.margin}")
        if self.mining not in MINING:
            raise ValueError(f"mining: unknown {self.mining!r}; available: {', '.join(MINING)}")


class TripletLoss(Loss):
    """The triplet loss on the projections ``z`` of a two-view episode."""

    NAME = "triplet"

    READS = frozenset()
    Config = TripletConfig

    def __init__(self, config: TripletConfig, context: BuildContext | None) -> None:
        super().__init__()
        self.config = config

    def forward(self, inputs: LossInputs) -> Tensor:
        c = self.config
        rows = two_view_rows(inputs, "triplet", normalize=c.normalize, gather=c.gather)
        return triplet_loss(rows, c.margin, c.mining)
