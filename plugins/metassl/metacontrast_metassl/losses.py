"""Losses: cross-entropy on a solver's query logits, BYOL's regression to the teacher,
and the large-rotation prediction loss (LLR)."""

from __future__ import annotations

import attrs
import torch.nn.functional as F
from torch import Tensor, nn

from metacontrast.interfaces import BuildContext, Loss
from metacontrast.records import LossInputs, ShapeError
from metacontrast_metassl.solvers import cross_view_targets


def soft_cross_entropy(scores: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of ``scores (Q, N)`` against class indices ``(Q,)`` or soft
    targets ``(Q, N)`` (rows summing to 1)."""
    if targets.dim() == 1:
        return F.cross_entropy(scores, targets)
    return -(targets * F.log_softmax(scores, dim=1)).sum(dim=1).mean()


class QueryCELoss(Loss):
    """Cross-entropy of the solver's query logits (the outer loss of the meta-learner)."""

    NAME = "query_ce"

    READS = frozenset({"logits", "mixed"})

    NEEDS = frozenset({"logits"})

    def __init__(self, config: object, context: BuildContext) -> None:
        super().__init__()

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.logits is None:
            raise ShapeError("query_ce needs a solver's logits: choose solver=protonet|ridge|svm|all_pairs")
        return soft_cross_entropy(inputs.logits.scores.float(), inputs.logits.targets)


@attrs.define
class BYOLConfig:
    """``predictor_hidden``: hidden width of the predictor MLP (BYOL: 4096 on ImageNet;
    the meta-learning paper uses 2048 with output 256 = the projection's size)."""

    predictor_hidden: int = 2048

    def __attrs_post_init__(self) -> None:
        if self.predictor_hidden < 1:
            raise ValueError(f"predictor_hidden must be >= 1, got {self.predictor_hidden}")


class BYOLLoss(Loss):
    """BYOL (Grill et al., 2020): the online prediction ``q(z)`` of each view regresses the
    teacher's projection of the other view, ``2 - 2 cos(q_i, z'_j)``, summed over the
    views of an image and averaged over images (for two views: ``L + L~`` of the paper).
    With mixed views, each prediction's targets are weighted by class overlap, as in
    Un-Mix. The teacher is the model's EMA copy (``teacher:`` config)."""

    NAME = "byol"

    READS = frozenset({"teacher", "mixed"})

    NEEDS = frozenset({"teacher"})
    Config = BYOLConfig

    def __init__(self, config: BYOLConfig, context: BuildContext) -> None:
        super().__init__()
        d, hidden = context.head_dim, config.predictor_hidden
        self.predictor = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, d))

    def forward(self, inputs: LossInputs) -> Tensor:
        emb, ep = inputs.embeddings, inputs.episode
        if emb.teacher_z is None:
            raise ShapeError("byol needs the EMA teacher's projections: set teacher (method=byol does)")
        if emb.teacher_views != tuple(range(inputs.views.n_views)):
            raise ShapeError(f"byol regresses the teacher's projections of every view; the teacher embeds "
                             f"views {list(emb.teacher_views)}: set teacher.views=null")
        p = F.normalize(self.predictor(emb.z).float(), dim=-1)
        t = F.normalize(emb.teacher_z.float(), dim=-1)
        local = ep.local()  # the teacher's rows are this rank's: targets never leave it
        weights = cross_view_targets(local, local.all_pairs(), local.mix_of_all_ranks())  # (V*B, V*B)
        return (weights * (2 - 2 * p @ t.T)).sum() / ep.batch_size


class RotationLoss(Loss):
    """Large-rotation prediction (LLR): a 4-way linear head on the projection of each
    rotated copy (``Views.extra["rotation"]``) predicts its angle (0, 90, 180, 270)."""

    NAME = "rotation"

    READS = frozenset()

    def __init__(self, config: object, context: BuildContext) -> None:
        super().__init__()
        self.classifier = nn.Linear(context.head_dim, 4)

    def forward(self, inputs: LossInputs) -> Tensor:
        z = inputs.embeddings.extras.get("rotation")
        angles = inputs.views.params.get("rotation_angle")
        if z is None or angles is None:
            raise ShapeError("rotation loss needs rotated copies: add view_transforms.rotation_copies "
                             "(aux=rotation_loss does)")
        return F.cross_entropy(self.classifier(z).float(), angles.reshape(-1))
