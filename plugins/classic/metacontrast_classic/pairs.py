"""Anchors and candidates of a two-view episode, shared by the triplet and N-pair losses.

Rows of one rank: view 0 of its B images, then view 1 (``2B`` anchors). Candidates: the
same rows of every rank under DDP (gathered with gradient, rank-major: all ranks' view 0,
then all ranks' view 1; ``2n`` rows for a global batch n). Each anchor's positive is the
other view of its image; every row of another image is a negative.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from metacontrast import distributed
from metacontrast.records import LossInputs, ShapeError


@dataclasses.dataclass(frozen=True, eq=False)
class PairRows:
    """``anchors (2B, D)``, ``candidates (2n, D)``, ``positive (2B,)``: the candidate
    index of each anchor's positive; ``self_index (2B,)``: the anchor's own candidate row."""

    anchors: Tensor
    candidates: Tensor
    positive: Tensor
    self_index: Tensor

    def negative_mask(self) -> Tensor:
        """``(2B, 2n)`` true where the candidate is another image's view."""
        cols = torch.arange(self.candidates.shape[0], device=self.anchors.device)
        return (cols != self.positive[:, None]) & (cols != self.self_index[:, None])


def two_view_rows(inputs: LossInputs, loss: str, *, normalize: bool, gather: bool) -> PairRows:
    """The rows of a two-view episode's projections ``z`` (optionally L2-normalised)."""
    ep = inputs.episode
    if ep.n_views != 2:
        raise ShapeError(f"{loss} needs exactly 2 views per image, the episode has {ep.n_views}")
    if ep.mix_weight is not None:
        raise ShapeError(f"{loss} has hard positives only; it cannot score mixed views (mix=...)")
    za, zb = inputs.embeddings.view(0, 2).float(), inputs.embeddings.view(1, 2).float()
    if normalize:
        za, zb = torch.nn.functional.normalize(za, dim=1), torch.nn.functional.normalize(zb, dim=1)
    b = za.shape[0]
    world = distributed.current() if gather else distributed.WorldInfo()
    all_a = distributed.gather_with_grad(za) if gather else za
    all_b = distributed.gather_with_grad(zb) if gather else zb
    n = all_a.shape[0]
    local = torch.arange(b, device=za.device) + world.rank * b
    return PairRows(anchors=torch.cat([za, zb]), candidates=torch.cat([all_a, all_b]),
                    positive=torch.cat([local + n, local]), self_index=torch.cat([local, local + n]))
