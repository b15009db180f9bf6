"""NT-Xent, the normalised temperature-scaled cross entropy (SimCLR, equation 1).

For a positive pair (i, j) among the 2N view-samples of a batch:
``l(i, j) = -log exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)``,
averaged over all 2N anchors (both (i, j) and (j, i)). Under DDP the candidates are the
view-samples of all ranks (gathered with gradient), so each anchor meets 2 * N_global - 2
negatives, exactly as one process on the global batch.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast import distributed
from metacontrast.interfaces import BuildContext, Loss
from metacontrast.layout import PairLayout, pair_layout
from metacontrast.records import LossInputs, ShapeError


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float, *, gather: bool = True) -> Tensor:
    """NT-Xent of the local pairs ``(z_a[i], z_b[i])``; ``z_a, z_b (B, D)``. 0-dim.

    For callers without an episode (tests, other libraries' tensors): the layout is the
    two-view all-pairs one of this process group (``gather``) or of this rank alone, from
    ``metacontrast.layout``. Computed in float32."""
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ShapeError(f"nt_xent: z_a and z_b must both be (B, D), got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    world = distributed.current() if gather else distributed.WorldInfo()
    layout = pair_layout(z_a.shape[0], 2, world.rank, world.world_size, z_a.device)
    return nt_xent_of_views(torch.cat([z_a, z_b]), temperature, layout)


def nt_xent_of_views(z: Tensor, temperature: float, layout: PairLayout) -> Tensor:
    """NT-Xent of ``z (2B, D)``, the projections of view 0 of B images then of view 1
    (an all-pairs episode's rows). 0-dim, float32. The candidates, each anchor's own column
    and its positive are the episode's ``layout`` (``Episode.all_pairs``)."""
    if z.dim() != 2 or z.shape[0] % 2 or layout.positive is None:
        raise ShapeError(f"nt_xent: z must be (2B, D), two views of B images, got {tuple(z.shape)}")
    zn = F.normalize(z.float(), dim=1)
    logits = (zn @ layout.candidates(zn).T).div_(temperature)  # (2B, 2G)
    logits = logits.masked_fill(layout.self_mask, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, layout.positive)


@attrs.define
class NTXentConfig:
    """``temperature``: tau (0.5 is the paper's best for CIFAR-10, 0.1 for ImageNet at
    large batch). ``gather``: take negatives from all ranks under DDP."""

    temperature: float = 0.5
    gather: bool = True

    def __attrs_post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class NTXentLoss(Loss):
    """NT-Xent on the projections ``z`` of a two-view all-pairs episode."""

    NAME = "nt_xent"

    READS = frozenset()
    Config = NTXentConfig

    def __init__(self, config: NTXentConfig, context: BuildContext) -> None:
        super().__init__()
        self.temperature = config.temperature
        self.gather = config.gather

    def forward(self, inputs: LossInputs) -> Tensor:
        ep = inputs.episode
        if ep.n_views != 2:
            raise ShapeError(f"nt_xent needs exactly 2 views per image, the episode has {ep.n_views}")
        if ep.mix_weight is not None:
            raise ShapeError("nt_xent has one positive per view and no soft targets for mixed views; for "
                             "SimCLR with mixing use solver=all_pairs loss=[query_ce] (the same loss, "
                             "with soft targets)")
        emb = inputs.embeddings
        z = emb.z if not emb.online_views else torch.cat([emb.view(0), emb.view(1)])
        return nt_xent_of_views(z, self.temperature, ep.all_pairs(self.gather))
