"""Index tensors of an episode's layout, made once per shape and device.

An episode of V views of B images on each of W ranks (``metacontrast.records.Episode``)
lays its view-samples out view-major: local row ``v * B + b`` is view ``v`` of image ``b``,
of class ``rank * B + b``. Its index tensors depend only on ``(B, V, rank, W)``, so they
are built once and reused by every step (building them per step would cost a launch or a
host-to-device copy each time). They are shared: never modify them in place.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeIndices:
    """``labels (V*B,)``: the global class of each local view-sample; ``rows (V*B,)``:
    ``0 .. V*B - 1``."""

    labels: Tensor
    rows: Tensor


@functools.lru_cache(maxsize=64)
def episode_indices(batch: int, n_views: int, rank: int, device: torch.device) -> EpisodeIndices:
    with torch.inference_mode(False):
        labels = (torch.arange(batch) + rank * batch).repeat(n_views)
        return EpisodeIndices(labels=labels.to(device), rows=torch.arange(n_views * batch).to(device))


@dataclasses.dataclass(frozen=True, eq=False)
class PairLayout:
    """The all-pairs layout: every local view-sample (anchor, row ``v * B + b``) against
    the view-samples of all ranks (candidates, column ``v * G + r * B + b``, ``G = W * B``:
    view-major, rank-major within a view, as ``distributed.gather_with_grad`` of each
    view stacks them). ``self_index (V*B,)``: each anchor's own column; ``self_mask
    (V*B, V*G)``: true there; ``positive (V*B,)``: for two views, the column of the
    other view of the same image. ``rank``, ``world_size``: whose layout it is."""

    self_index: Tensor
    self_mask: Tensor
    positive: Tensor | None
    rank: int = 0
    world_size: int = 1


@functools.lru_cache(maxsize=64)
def pair_layout(batch: int, n_views: int, rank: int, world_size: int, device: torch.device) -> PairLayout:
    with torch.inference_mode(False):
        g = batch * world_size
        own = torch.arange(batch) + rank * batch
        self_index = (torch.arange(n_views)[:, None] * g + own[None, :]).reshape(-1)
        self_mask = self_index[:, None] == torch.arange(n_views * g)[None, :]
        positive = (self_index + g) % (2 * g) if n_views == 2 else None
        return PairLayout(self_index=self_index.to(device), self_mask=self_mask.to(device),
                          positive=None if positive is None else positive.to(device), rank=rank,
                          world_size=world_size)
