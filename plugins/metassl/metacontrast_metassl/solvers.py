"""Inner-loop solvers: fit a classifier on each task's support, score the queries.

- ``protonet``: class prototypes (mean of the support), scores ``-||q - p||^2 / T`` or
  cosine ``/ T`` (Snell et al., 2017).
- ``ridge`` (R2-D2, Bertinetto et al., 2019): closed-form ridge regression of one-hot
  targets, ``W = (X^T X + lam I)^-1 X^T Y``, solved in the smaller of the feature space
  (D x D) and the sample space (S x S, through the Woodbury identity
  ``W = X^T (X X^T + lam I)^-1 Y``); scores ``alpha * q W + beta`` with learnable scale
  and bias.
- ``svm``: see ``metacontrast_metassl.svm``.
- ``all_pairs``: SimCLR's episode as a solver: every view-sample scored by cosine / T
  against every other one of all ranks; with ``query_ce`` it is NT-Xent.

Each returns ``Logits`` whose ``targets`` are class indices, or soft rows when views
were mixed. Solvers run in float32 (autocast off): the closed forms need it.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacontrast.closed_forms import ridge_weights
from metacontrast.interfaces import BuildContext, Solver
from metacontrast.layout import PairLayout
from metacontrast.records import Embeddings, Episode, Logits, ShapeError, soft_class_targets
from metacontrast_metassl.tasks import Tasks, per_task_scores, split_tasks, targets_for_loss

DISTANCES = ("euclidean", "cosine")
__all__ = ["AllPairsSolver", "ProtoNetSolver", "RidgeSolver", "protonet_scores", "ridge_weights"]


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def prototypes(tasks: Tasks) -> Tensor:
    """Mean support embedding of each class: ``(n, N_t, D)``."""
    n, s, d = tasks.support.shape
    ways = tasks.support_targets.shape[2]
    return tasks.support.view(n, s // ways, ways, d).mean(dim=1)


def protonet_scores(query: Tensor, protos: Tensor, task: Tensor, distance: str) -> Tensor:
    """``query (Q, D)`` against the prototypes ``protos (n, N, D)`` of its ``task (Q,)``
    -> ``(Q, N)``: ``-||q - p||^2`` (expanded as ``2 q.p - ||q||^2 - ||p||^2``) or cosine."""
    if distance == "cosine":
        query, protos = F.normalize(query, dim=-1), F.normalize(protos, dim=-1)
    scores = per_task_scores(query, protos.transpose(1, 2), task)
    if distance == "euclidean":
        scores = 2 * scores - query.pow(2).sum(-1, keepdim=True) - protos.pow(2).sum(-1)[task]
    return scores


@attrs.define
class ProtoNetConfig:
    """``distance``: euclidean (squared) | cosine. ``temperature``: scores are divided by
    it. ``normalize``: L2-normalise embeddings first (then squared Euclidean / 1.0 ranks
    like cosine / 0.5)."""

    distance: str = "euclidean"
    temperature: float = 1.0
    normalize: bool = True

    def __attrs_post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        _positive("temperature", self.temperature)


class ProtoNetSolver(Solver):
    NAME = "protonet"
    Config = ProtoNetConfig

    def __init__(self, config: ProtoNetConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, embeddings: Embeddings, episode: Episode) -> Logits:
        with torch.autocast(embeddings.z.device.type, enabled=False):
            tasks = split_tasks(projections(embeddings, self.config.normalize), episode)
            scores = protonet_scores(tasks.query, prototypes(tasks), tasks.query_task, self.config.distance)
            scores = scores / self.config.temperature
        return Logits(scores=scores, targets=targets_for_loss(tasks.query_targets, episode))


@attrs.define
class RidgeConfig:
    """``lam``: ridge penalty (50 as in R2-D2/MetaOptNet). ``scale_init``/``learn_scale``:
    the output scale alpha (and bias beta, initialised at 0). ``normalize``: L2-normalise
    embeddings first. ``space``: auto | primal | dual (see ``ridge_weights``)."""

    lam: float = 50.0
    scale_init: float = 1.0
    learn_scale: bool = True
    normalize: bool = False
    space: str = "auto"

    def __attrs_post_init__(self) -> None:
        _positive("lam", self.lam)
        if self.space not in ("auto", "primal", "dual"):
            raise ValueError(f"space must be auto, primal or dual, got {self.space!r}")


def projections(embeddings: Embeddings, normalize: bool) -> Tensor:
    """The projections ``z (V*B, D)`` in float32, L2-normalised when asked."""
    z = embeddings.z.float()
    return F.normalize(z, dim=-1) if normalize else z


class LinearTaskSolver(Solver):
    """Base of solvers that fit a linear classifier ``W (n, D, N)`` on each task's support
    (``fit``) and score queries ``alpha q W + beta`` with R2-D2's learnable scale alpha and
    bias beta. ``config`` needs ``scale_init``, ``learn_scale`` and ``normalize``."""

    def __init__(self, config: Any, context: BuildContext | None = None) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.tensor(float(config.scale_init)), requires_grad=config.learn_scale)
        self.bias = nn.Parameter(torch.tensor(0.0), requires_grad=config.learn_scale)

    def fit(self, support: Tensor, targets: Tensor) -> Tensor:  # pragma: no cover
        """``support (n, S, D)``, one-hot ``targets (n, S, N)`` -> ``W (n, D, N)``."""
        raise NotImplementedError

    def forward(self, embeddings: Embeddings, episode: Episode) -> Logits:
        with torch.autocast(embeddings.z.device.type, enabled=False):
            tasks = split_tasks(projections(embeddings, self.config.normalize), episode)
            w = self.fit(tasks.support, tasks.support_targets)
            scores = self.scale * per_task_scores(tasks.query, w, tasks.query_task) + self.bias
        return Logits(scores=scores, targets=targets_for_loss(tasks.query_targets, episode))


class RidgeSolver(LinearTaskSolver):
    NAME = "ridge"
    Config = RidgeConfig

    def fit(self, support: Tensor, targets: Tensor) -> Tensor:
        return ridge_weights(support, targets, self.config.lam, self.config.space)


@attrs.define
class AllPairsConfig:
    """``temperature``: tau of the cosine similarities (SimCLR: 0.5 on CIFAR-10)."""

    temperature: float = 0.5

    def __attrs_post_init__(self) -> None:
        _positive("temperature", self.temperature)


def cross_view_targets(episode: Episode, layout: PairLayout,
                       candidate_mix: tuple[Tensor, Tensor] | None) -> Tensor:
    """For each local view-sample (anchor), a distribution over the ``layout``'s candidates:
    proportional to the overlap of their class targets, counting only candidates of other
    views. Unmixed, this is the uniform distribution over the other views of the same image
    (SimCLR's positive for V = 2). ``(V*B, V*G)``."""
    anchors = episode.class_targets()  # (V*B, G)
    cand = soft_class_targets(layout.candidate_classes, episode.n_way, *(candidate_mix or (None, None)))
    overlap = (anchors @ cand.T).masked_fill(layout.same_view, 0.0)
    return overlap / overlap.sum(dim=1, keepdim=True).clamp_min(1e-12)


class AllPairsSolver(Solver):
    """Scores ``(V*B, V*G)``: every local view-sample against every view-sample of all
    ranks (itself masked out), cosine / T."""

    NAME = "all_pairs"
    Config = AllPairsConfig

    def __init__(self, config: AllPairsConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, embeddings: Embeddings, episode: Episode) -> Logits:
        if not episode.exclude_self:
            raise ShapeError("all_pairs needs the all-pairs episode (episode=pairs)")
        with torch.autocast(embeddings.z.device.type, enabled=False):
            z = projections(embeddings, normalize=True)
            layout = episode.all_pairs()
            scores = (z @ layout.candidates(z).T).div_(self.config.temperature)  # (V*B, V*G)
            scores = scores.masked_fill(layout.self_mask, torch.finfo(scores.dtype).min)
            if episode.mix_weight is None and layout.positive is not None:  # the other view
                targets = layout.positive
            else:
                targets = cross_view_targets(episode, layout, episode.mix_of_all_ranks())
        return Logits(scores=scores, targets=targets)
