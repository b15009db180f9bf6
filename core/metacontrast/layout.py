"""Where an episode's rows are: the one place that knows the layout of view-samples.

An episode of V views of B images on each of W ranks (``metacontrast.records.Episode``)
lays its view-samples out view-major: local row ``v * B + b`` is view ``v`` of image ``b``,
of class ``rank * B + b`` among ``G = W * B`` classes. Gathered from every rank, the
candidates are view-major and rank-major within a view: column ``v * G + r * B + b``.

Losses and solvers never work this out themselves: they ask the episode
(``Episode.all_pairs``, ``Episode.support_of_all_ranks``, ``Episode.local``), which reads
it here. The index tensors depend only on ``(B, V, rank, W)``, so they are built once and
reused by every step (building them per step would cost a launch or a host-to-device
copy each time). They are shared: never modify them in place.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor

from metacontrast import distributed


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeIndices:
    """``labels (V*B,)``: the global class of each local view-sample; ``rows (V*B,)``:
    ``0 .. V*B - 1``."""

    labels: Tensor
    rows: Tensor


@functools.lru_cache(maxsize=64)
def episode_indices(batch: int, n_views: int, rank: int, device: torch.device) -> EpisodeIndices:
    with torch.inference_mode(False):
        labels = (torch.arange(batch, device=device) + rank * batch).repeat(n_views)
        return EpisodeIndices(labels=labels, rows=torch.arange(n_views * batch, device=device))


def gather_rows(z: Tensor, n_views: int, world_size: int) -> Tensor:
    """Local view-major rows ``z (V*B, D)`` -> ``(V, W*B, D)``: every rank's images,
    rank-major within each view (one collective, with gradient to each rank's own rows)."""
    zv = z.view(n_views, -1, z.shape[-1])
    if world_size == 1:
        return zv
    return distributed.gather_with_grad(zv.transpose(0, 1).contiguous()).transpose(0, 1)


@dataclasses.dataclass(frozen=True, eq=False)
class PairLayout:
    """The all-pairs layout: every local view-sample (anchor, row ``v * B + b``) against
    the view-samples of all ranks (candidates, column ``v * G + r * B + b``).

    ``self_index (V*B,)``: each anchor's own column; ``self_mask (V*B, V*G)``: true there;
    ``positive (V*B,)``: for two views, the column of the other view of the same image
    (``None`` otherwise); ``negative_mask (V*B, V*G)``: true on the columns of other images
    (two views); ``same_view (V*B, V*G)``: true where anchor and candidate are the same view;
    ``candidate_classes (V*G,)``: each column's class. ``rank``, ``world_size``: whose
    layout it is; ``candidates(rows)`` gathers the columns."""

    self_index: Tensor
    self_mask: Tensor
    positive: Tensor | None
    negative_mask: Tensor | None
    same_view: Tensor
    candidate_classes: Tensor
    n_views: int
    rank: int = 0
    world_size: int = 1

    def candidates(self, rows: Tensor) -> Tensor:
        """The local anchors' rows ``(V*B, D)`` -> the candidates ``(V*G, D)`` of all ranks,
        in column order (gathered with gradient)."""
        return gather_rows(rows, self.n_views, self.world_size).reshape(-1, rows.shape[-1])


@functools.lru_cache(maxsize=64)
def pair_layout(batch: int, n_views: int, rank: int, world_size: int, device: torch.device) -> PairLayout:
    """The ``PairLayout`` of ``n_views`` views of ``batch`` images on rank ``rank`` of
    ``world_size``, made once."""
    with torch.inference_mode(False):
        g = batch * world_size
        own = torch.arange(batch, device=device) + rank * batch
        views = torch.arange(n_views, device=device)
        self_index = (views[:, None] * g + own[None, :]).reshape(-1)
        columns = torch.arange(n_views * g, device=device)
        self_mask = self_index[:, None] == columns[None, :]
        positive = negative = None
        if n_views == 2:
            positive = (self_index + g) % (2 * g)
            negative = (columns[None, :] != positive[:, None]) & ~self_mask
        same_view = views.repeat_interleave(batch)[:, None] == views.repeat_interleave(g)[None, :]
        classes = torch.arange(g, device=device).repeat(n_views)
        return PairLayout(self_index=self_index, self_mask=self_mask, positive=positive,
                          negative_mask=negative, same_view=same_view, candidate_classes=classes,
                          n_views=n_views, rank=rank, world_size=world_size)
