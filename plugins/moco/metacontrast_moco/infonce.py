"""MoCo's InfoNCE: a query against its momentum key (positive) and the queue (negatives).

``L = -1/B sum_i log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_m exp(q_i.n_m / t)) )``
with ``q`` the online projection of the query view, ``k`` the EMA key encoder's projection
of the key view (``teacher.views`` must include it) and ``n`` the queue's keys as they were
before this step (``memory=queue``). MoCo v2: t = 0.2.
"""

from __future__ import annotations

import attrs
from torch import Tensor

from metacontrast.contrast import positive_and_memory_logits
from metacontrast.interfaces import BuildContext, Loss
from metacontrast.records import LossInputs, ShapeError


@attrs.define
class QueueInfoNCEConfig:
    """``temperature`` t. ``query_view``/``key_view``: which views are the query (online
    network) and the key (momentum encoder). ``symmetric``: also the swapped pair, the two
    losses averaged (the teacher must then embed both views)."""

    temperature: float = 0.2
    query_view: int = 0
    key_view: int = 1
    symmetric: bool = False

    def __attrs_post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.query_view == self.key_view or min(self.query_view, self.key_view) < 0:
            raise ValueError(f"query_view and key_view must be two different views, got "
                             f"{self.query_view} and {self.key_view}")


def queue_infonce(queries: Tensor, keys: Tensor, memory: Tensor, temperature: float, *,
                  memory_normalized: bool = False) -> Tensor:
    """0-dim InfoNCE of ``queries (B, D)`` against ``keys (B, D)`` and ``memory (M, D)``
    (unit rows when ``memory_normalized``): the positive is column 0 of every row."""
    logits = positive_and_memory_logits(queries, keys.detach(), memory.detach(), temperature,
                                        memory_normalized=memory_normalized)
    return -logits.log_softmax(dim=1)[:, 0].mean()


class QueueInfoNCELoss(Loss):
    """MoCo's loss on ``LossInputs``: needs ``memory`` and the teacher's key view."""

    NAME = "moco_infonce"

    READS = frozenset({"memory", "teacher"})

    NEEDS = frozenset({"memory", "teacher"})
    Config = QueueInfoNCEConfig
    READS_ALL_VIEWS = False

    def __init__(self, config: QueueInfoNCEConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, inputs: LossInputs) -> Tensor:
        c, emb, n_views = self.config, inputs.embeddings, inputs.views.n_views
        if inputs.memory is None:
            raise ShapeError("moco_infonce needs a memory of negatives: set memory=queue "
                             "(method=moco_v2 does)")
        if max(c.query_view, c.key_view) >= n_views:
            raise ShapeError(f"moco_infonce: query_view={c.query_view}, key_view={c.key_view}, but the view "
                             f"generator makes {n_views} views")
        pairs = [(c.query_view, c.key_view)] + ([(c.key_view, c.query_view)] if c.symmetric else [])
        losses = [queue_infonce(emb.view(q), emb.teacher_view(k), inputs.memory,
                                c.temperature, memory_normalized=inputs.memory_normalized) for q, k in pairs]
        return sum(losses[1:], losses[0]) / len(losses)
