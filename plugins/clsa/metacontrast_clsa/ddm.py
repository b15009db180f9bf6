"""CLSA's distributional divergence minimisation (equations 3 and 4).

Over the representation bank ``{z_i} + Q`` (the momentum key of image i and the queue),
a query ``q`` defines ``p(. | q) = softmax([sim(q, z_i), sim(q, z_1..K)] / t)`` (eq. 3,
cosine similarity). The weak query's distribution is the target, without gradient; the
strong query's log-probabilities are trained towards it:

``L_D = 1/B sum_i [ -sum_k p(z_k | z'_i) log p(z_k | z''_i) - p(z_i | z'_i) log p(z_i | z''_i) ]``

(eq. 4), summed over the strong views (CLSA-multi). ``L = L_C + beta * L_D`` with the
loss weight as beta (1.0).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from metacontrast.contrast import positive_and_memory_logits
from metacontrast.interfaces import BuildContext, Loss
from metacontrast.records import LossInputs, ShapeError


@attrs.define
class DDMConfig:
    """``temperature`` t (0.2). ``weak_view``: the weak query; ``key_view``: the view the
    momentum encoder embeds (the positive key); ``strong_views``: the strong queries
    (null: every other view)."""

    temperature: float = 0.2
    weak_view: int = 0
    key_view: int = 1
    strong_views: list[int] | None = None

    def __attrs_post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.weak_view == self.key_view:
            raise ValueError(f"weak_view and key_view must differ, got {self.weak_view}")
        if self.strong_views is not None and {self.weak_view, self.key_view} & set(self.strong_views):
            raise ValueError(f"strong_views {self.strong_views} must not include the weak view "
                             f"{self.weak_view} or the key view {self.key_view}")


def ddm_loss(weak: Tensor, strong: list[Tensor], keys: Tensor, memory: Tensor, temperature: float, *,
             memory_normalized: bool = False) -> Tensor:
    """0-dim DDM: ``weak (B, D)`` queries give the target distributions, each ``strong[s]
    (B, D)`` is trained towards them; ``keys (B, D)`` positives, ``memory (M, D)``
    negatives (unit rows when ``memory_normalized``). Summed over strong views, averaged
    over the batch. The weak and every strong query are scored in one product; the weak
    rows become targets detached, so the backward does not run through their softmax."""
    b, n_strong = weak.shape[0], len(strong)
    queries = torch.cat([weak.detach(), *strong])  # (B (1 + S), D); the weak rows carry no gradient
    logits = positive_and_memory_logits(queries, keys.detach().repeat(1 + n_strong, 1), memory.detach(),
                                        temperature, memory_normalized=memory_normalized)
    target = logits[:b].detach().softmax(dim=1)  # (B, 1 + M): targets take no gradient
    log_p = logits[b:].log_softmax(dim=1).view(n_strong, b, -1)
    return -(target * log_p).sum(dim=-1).mean(dim=-1).sum()


class DDMLoss(Loss):
    """CLSA's DDM on ``LossInputs``: needs ``memory`` (the queue) and the teacher's key view."""

    NAME = "ddm"

    READS = frozenset({"memory", "teacher"})

    NEEDS = frozenset({"memory", "teacher"})
    Config = DDMConfig
    READS_ALL_VIEWS = False

    def __init__(self, config: DDMConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def strong_views(self, n_views: int) -> list[int]:
        c = self.config
        if c.strong_views is not None:
            return list(c.strong_views)
        return [v for v in range(n_views) if v not in (c.weak_view, c.key_view)]

    def forward(self, inputs: LossInputs) -> Tensor:
        c, emb, n_views = self.config, inputs.embeddings, inputs.views.n_views
        if inputs.memory is None:
            raise ShapeError("ddm needs the queue of negatives: set memory=queue (method=clsa_single does)")
        strong = self.strong_views(n_views)
        if not strong:
            raise ShapeError(f"ddm needs strong views besides the weak view {c.weak_view} and the key "
                             f"view {c.key_view}; the view generator makes {n_views} views (use "
                             f"views=clsa_single)")
        if max([c.weak_view, c.key_view, *strong]) >= n_views:
            raise ShapeError(f"ddm: views {[c.weak_view, c.key_view, *strong]} asked for, but the view "
                             f"generator makes {n_views} views")
        return ddm_loss(emb.view(c.weak_view), [emb.view(v) for v in strong],
                        emb.teacher_view(c.key_view), inputs.memory, c.temperature,
                        memory_normalized=inputs.memory_normalized)
