"""An episode's embeddings arranged as tasks: supports of every rank, local queries.

Layout (see ``metacontrast.records.Episode``): view-sample ``v * B + b`` of rank ``r`` is
of class ``g = r * B + b`` among ``G = W * B`` classes, split into ``n`` tasks of
``N_t = G / n`` consecutive classes. Supports (the first m1 views) are gathered from all
ranks with gradient, so every rank fits the same task; each rank scores only its own
queries, and DDP's gradient averaging makes the sum the loss of the whole episode.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from metacontrast.records import Episode


@dataclasses.dataclass(frozen=True, eq=False)
class Tasks:
    """``support (n, m1 * N_t, D)`` ordered shot-major (index ``j * N_t + c``) with
    one-hot ``support_targets (n, m1 * N_t, N_t)``; local ``query (Q, D)`` with its
    ``query_task (Q,)`` and soft ``query_targets (Q, N_t)``."""

    support: Tensor
    support_targets: Tensor
    query: Tensor
    query_task: Tensor
    query_targets: Tensor


def split_tasks(z: Tensor, episode: Episode) -> Tasks:
    """Arrange ``z (V*B, D)`` (float32) as the episode's tasks (support/query episodes only)."""
    support = episode.support_of_all_ranks(z)  # (m1, G, D)
    m1, d = episode.n_support_views, z.shape[-1]
    n, ways = episode.tasks, episode.ways_per_task
    support = support.reshape(m1, n, ways, d).permute(1, 0, 2, 3).reshape(n, m1 * ways, d)
    eye = torch.eye(ways, device=z.device, dtype=z.dtype)
    support_targets = eye.repeat(m1, 1).expand(n, m1 * ways, ways)
    rows = episode.query
    task = episode.labels[rows] // ways
    targets = episode.class_targets(rows)  # (Q, G); mixing stays within a task (see Episode)
    cols = task[:, None] * ways + torch.arange(ways, device=z.device)
    return Tasks(support=support, support_targets=support_targets, query=z[rows], query_task=task,
                 query_targets=targets.gather(1, cols))


def targets_for_loss(targets: Tensor, episode: Episode) -> Tensor:
    """Class indices ``(Q,)`` for an unmixed episode (exact, and cheaper for the loss), the
    soft rows ``(Q, N)`` otherwise. Decided from the episode, without a device sync."""
    return targets if episode.mix_weight is not None else targets.argmax(dim=1)


def per_task_scores(query: Tensor, weights: Tensor, task: Tensor) -> Tensor:
    """``query (Q, D)`` times its own task's ``weights (n, D, N)`` -> ``(Q, N)``. Scores
    against every task at once and keeps each query's block: no ``(Q, D, N)`` copy of
    the weights (one matrix product when there is a single task)."""
    n, d, ways = weights.shape
    every = query @ weights.permute(1, 0, 2).reshape(d, n * ways)  # (Q, n * N)
    if n == 1:
        return every
    return every.view(-1, n, ways)[torch.arange(query.shape[0], device=query.device), task]
