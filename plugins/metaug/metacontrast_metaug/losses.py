"""``oucl`` (MetAug only OUCL) and ``metaug`` (OUCL with meta feature augmentation).

``L_ori``: OUCL over the original features of the batch (every feature an anchor;
positives and negatives as ``metacontrast_metaug.pairs`` defines them), with the memory's
entries (``LossInputs.memory``, a sample of the memory bank) as further negatives.
``L_aug``: OUCL of the original features against the augmented ones (pairs that join an
original and an augmented feature, the ``z-hat`` pairs of equation 5).
``L_MetAug = L_ori + delta * L_aug`` (equation 11). The margin-injected regularization
``R_sigma`` (equation 5) is not part of the loss: the meta step of
``metacontrast_metaug.step`` adds ``alpha * R_sigma`` to its objective.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from metacontrast.interfaces import BuildContext, Loss
from metacontrast.records import Embeddings, Episode, LossInputs, ShapeError
from metacontrast_metaug.oucl import MARGINS, OUCLConfig, margin_regularization, margins, oucl_per_anchor
from metacontrast_metaug.pairs import SIMILARITIES, PairSims, pair_sims, split_parts


@attrs.define
class OUCLLossConfig(OUCLConfig):
    """OUCL's settings (``OUCLConfig``) plus ``similarity`` d: ``cosine`` or
    ``unit_interval`` (``(1 + cos) / 2``); ``memory_negatives``: use the memory's entries
    as negatives when a memory is configured."""

    similarity: str = "cosine"
    memory_negatives: bool = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity: unknown {self.similarity!r}; available: {', '.join(SIMILARITIES)}")


def mean_oucl(pairs: PairSims, config: OUCLConfig) -> Tensor:
    """OUCL averaged over the anchors: 0-dim."""
    return oucl_per_anchor(pairs.sims, pairs.sims, pairs.pos, pairs.neg, config).mean()


class OUCLLoss(Loss):
    """``L_ori`` over ``Embeddings.z`` cut into the head's parts (``BuildContext.head_parts``)."""

    NAME = "oucl"

    READS = frozenset({"memory"})
    Config = OUCLLossConfig

    def __init__(self, config: OUCLLossConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.parts = context.head_parts
        if context.head_dim and context.head_dim % self.parts:
            raise ValueError(f"the head's {context.head_dim} features do not split into {self.parts} parts")

    def features(self, embeddings: Embeddings, episode: Episode) -> tuple[Tensor, Tensor]:
        """``(parts (R, M, D), image ids (R,))``; needs every view's rows."""
        labels = episode.labels
        if embeddings.z.shape[0] != labels.shape[0]:
            raise ShapeError(f"{self.NAME}: {embeddings.z.shape[0]} embedded rows for {labels.shape[0]} "
                             f"view-samples; the loss reads every view")
        if self.parts == 1 and episode.n_views == 1:
            raise ShapeError(f"{self.NAME}: one view of each image and a head with one part leave no "
                             f"positive pair; use channel views (split_projection) or views.n_views >= 2")
        return split_parts(embeddings.z, self.parts), labels

    def original_pairs(self, parts: Tensor, ids: Tensor, memory: Tensor | None) -> PairSims:
        """Original features against each other, then against the memory's entries."""
        kind = self.config.similarity
        pairs = pair_sims(parts, ids, parts, ids, kind, same_features=True)
        if memory is not None and self.config.memory_negatives:
            pairs = pairs.cat(pair_sims(parts, ids, split_parts(memory.detach(), self.parts), None, kind))
        return pairs

    def forward(self, inputs: LossInputs) -> Tensor:
        parts, ids = self.features(inputs.embeddings, inputs.episode)
        return mean_oucl(self.original_pairs(parts, ids, inputs.memory), self.config)


@attrs.define
class MetAugLossConfig(OUCLLossConfig):
    """``delta``: weight of ``L_aug`` (equation 11). ``alpha``: weight of ``R_sigma`` in the
    meta objective. ``margin``: large (eq. 4), medium or small (appendix A.2).
    ``inner_lr``: l, the step of the fast weights (equation 3). ``second_order``: take the
    gradient through the fast weights' own gradient (false: first-order approximation).
    ``mag_hidden``: hidden width of each MAG (0: the projection width)."""

    delta: float = 0.01
    alpha: float = 1.0e-3
    margin: str = "large"
    inner_lr: float = 1.0e-3
    second_order: bool = True
    mag_hidden: int = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.margin not in MARGINS:
            raise ValueError(f"margin: unknown margin {self.margin!r}; available: {', '.join(MARGINS)}")
        if self.inner_lr <= 0:
            raise ValueError(f"inner_lr: must be > 0, got {self.inner_lr}")
        if self.mag_hidden < 0:
            raise ValueError(f"mag_hidden: must be >= 0, got {self.mag_hidden}")


class MetaFeatureAugmenter(nn.Module):
    """One MAG ``a_omega_j``: ``(N, D) -> (N, D)``, Linear-ReLU-Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MetAugLoss(OUCLLoss):
    """``L_MetAug = L_ori + delta * L_aug`` with one MAG per view part (``mags``). Its
    objective (``metacontrast_metaug.step.MetAugObjective``, in the default step) updates
    the encoders and heads with this loss and the MAGs with the meta objective."""

    NAME = "metaug"

    READS = frozenset({"memory"})
    Config = MetAugLossConfig

    def __init__(self, config: MetAugLossConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        if not context.head_dim:
            raise ValueError("metaug: the head's width is unknown here")
        dim = context.head_dim // self.parts
        hidden = config.mag_hidden or dim
        self.mags = nn.ModuleList(MetaFeatureAugmenter(dim, hidden) for _ in range(self.parts))
        self.differentiates_twice = bool(config.second_order)

    def augment(self, parts: Tensor) -> Tensor:
        """Original parts ``(R, M, D)`` -> augmented parts ``(R, M, D)`` (unit norm)."""
        out = torch.stack([mag(parts[:, j]) for j, mag in enumerate(self.mags)], dim=1)
        return torch.nn.functional.normalize(out, dim=2)

    def augmented_pairs(self, parts: Tensor, ids: Tensor) -> PairSims:
        """Original anchors against augmented candidates."""
        return pair_sims(parts, ids, self.augment(parts), ids, self.config.similarity)

    def terms(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """``(L_ori, L_aug)``, both 0-dim."""
        parts, ids = self.features(inputs.embeddings, inputs.episode)
        ori = mean_oucl(self.original_pairs(parts, ids, inputs.memory), self.config)
        return ori, mean_oucl(self.augmented_pairs(parts, ids), self.config)

    def forward(self, inputs: LossInputs) -> Tensor:
        ori, aug = self.terms(inputs)
        return ori + self.config.delta * aug

    def regularization(self, embeddings: Embeddings, episode: Episode) -> Tensor:
        """``R_sigma`` (eq. 5) with margins (eq. 4 / A.2) from the batch's original pairs."""
        parts, ids = self.features(embeddings, episode)
        original = pair_sims(parts, ids, parts, ids, self.config.similarity, same_features=True)
        m = margins(original.sims, original.sims, self.config.margin, original.pos, original.neg)
        augmented = self.augmented_pairs(parts, ids)
        return margin_regularization(augmented.sims, augmented.sims, m, augmented.pos, augmented.neg)
