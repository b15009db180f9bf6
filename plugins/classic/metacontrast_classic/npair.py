"""The multi-class N-pair loss (Sohn, 2016; CS330's "V2", from binary to N-way):

    l_i = log(1 + sum_{j != i} exp(s(a_i, p_j) - s(a_i, p_i)))
        = -log exp(s(a_i, p_i)) / sum_j exp(s(a_i, p_j))

for anchors ``a`` (view 0) and positives ``p`` (view 1) of a two-view episode: each anchor
against the other images' positives only (unlike NT-Xent, no anchor-anchor negatives).
``similarity``: ``dot`` (Sohn's inner product) or ``neg_sq_distance`` (the lecture's
``-d(z, z')`` with the squared Euclidean distance). ``symmetric`` also takes view 1 as
anchors against view 0 and averages. ``l2_reg`` adds ``l2_reg * mean ||z||^2`` (Sohn
regularises the embeddings' norms, which the dot product would otherwise grow).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.interfaces import BuildContext, Loss
from metacontrast.records import LossInputs
from metacontrast_classic.pairs import PairRows, two_view_rows

SIMILARITIES = ("dot", "neg_sq_distance")


def npair_loss(rows: PairRows, *, similarity: str, symmetric: bool, l2_reg: float) -> Tensor:
    """0-dim N-pair loss of ``rows`` (see the module docstring)."""
    view_0, view_1 = rows.of_view(0), rows.of_view(1)  # (anchors, candidates, classes) of each view
    directions = [(view_0[0], view_1[1], view_0[2])]  # each anchor's positive: its own image's row
    if symmetric:
        directions.append((view_1[0], view_0[1], view_1[2]))
    total = rows.anchors.new_zeros(())
    for anchors, positives, target in directions:
        scores = anchors @ positives.T if similarity == "dot" else -torch.cdist(anchors, positives).pow(2)
        total = total + F.cross_entropy(scores, target)
    loss = total / len(directions)
    if l2_reg > 0:
        loss = loss + l2_reg * rows.anchors.pow(2).sum(1).mean()
    return loss


@attrs.define
class NPairConfig:
    """``similarity``: dot | neg_sq_distance; ``symmetric``; ``l2_reg`` on the squared
    norms of the projections; ``normalize``: L2-normalise first (then ``l2_reg`` is moot);
    ``gather``: positives from every rank under DDP."""

    similarity: str = "dot"
    symmetric: bool = True
    l2_reg: float = 0.002
    normalize: bool = False
    gather: bool = True

    def __attrs_post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity: unknown {self.similarity!r}; available: {', '.join(SIMILARITIES)}")
        if self.l2_reg < 0:
            raise ValueError(f"l2_reg: must be >= 0, got {self.l2_reg}")


class NPairLoss(Loss):
    """The N-pair loss on the projections ``z`` of a two-view episode."""

    NAME = "npair"

    READS = frozenset()
    Config = NPairConfig

    def __init__(self, config: NPairConfig, context: BuildContext | None) -> None:
        super().__init__()
        self.config = config

    def forward(self, inputs: LossInputs) -> Tensor:
        c = self.config
        rows = two_view_rows(inputs, "npair", normalize=c.normalize, gather=c.gather)
        return npair_loss(rows, similarity=c.similarity, symmetric=c.symmetric, l2_reg=c.l2_reg)
