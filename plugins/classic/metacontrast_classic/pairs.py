"""Anchors and candidates of a two-view episode, shared by the triplet and N-pair losses.

Rows of one rank: view 0 of its B images, then view 1 (``2B`` anchors). Candidates, each
anchor's own column, its positive (the other view of its image) and its negatives (every
row of another image) are the episode's all-pairs layout (``Episode.all_pairs``): under
DDP the rows of every rank, gathered with gradient.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from metacontrast.records import LossInputs, ShapeError


@dataclasses.dataclass(frozen=True, eq=False)
class PairRows:
    """``anchors (2B, D)``, ``candidates (2n, D)``, ``positive (2B,)``: the candidate
    index of each anchor's positive; ``negative_mask (2B, 2n)``: true where the candidate
    is another image's view; ``classes (2B,)``: each anchor's image among the ``n`` of all
    ranks, which is also its positive's row among the other view's ``n`` candidates."""

    anchors: Tensor
    candidates: Tensor
    positive: Tensor
    negative_mask: Tensor
    classes: Tensor

    def of_view(self, v: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(anchors (B, D), candidates (n, D), classes (B,))`` of view ``v`` alone."""
        b, n = self.anchors.shape[0] // 2, self.candidates.shape[0] // 2
        mine = slice(v * b, (v + 1) * b)
        return self.anchors[mine], self.candidates[v * n:(v + 1) * n], self.classes[mine]


def two_view_rows(inputs: LossInputs, loss: str, *, normalize: bool, gather: bool) -> PairRows:
    """The rows of a two-view episode's projections ``z`` (optionally L2-normalised)."""
    ep = inputs.episode
    if ep.n_views != 2:
        raise ShapeError(f"{loss} needs exactly 2 views per image, the episode has {ep.n_views}")
    if ep.mix_weight is not None:
        raise ShapeError(f"{loss} has hard positives only; it cannot score mixed views (mix=...)")
    za, zb = inputs.embeddings.view(0).float(), inputs.embeddings.view(1).float()
    if normalize:
        za, zb = torch.nn.functional.normalize(za, dim=1), torch.nn.functional.normalize(zb, dim=1)
    layout = ep.all_pairs(gather)
    anchors = torch.cat([za, zb])
    assert layout.positive is not None and layout.negative_mask is not None  # two views
    return PairRows(anchors=anchors, candidates=layout.candidates(anchors), positive=layout.positive,
                    negative_mask=layout.negative_mask, classes=ep.labels if gather else ep.local().labels)
