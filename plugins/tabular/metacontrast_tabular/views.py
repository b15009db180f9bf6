"""SAINT-style views of table rows: CutMix in input space, mixup in embedding space.

A noisy view of row ``x_b`` takes ``round(cutmix_fraction * F)`` of its entries, chosen
uniformly, from another row ``x_p`` of the batch (CutMix); its embedding is then mixed
with the embedding of a further row ``x_q`` of the same view:
``w * e(x'_b) + (1 - w) * e(x'_q)`` (mixup, applied by the encoder from the view's
``Views.embedding_mix``). SAINT draws each entry's replacement independently; here every
noisy row loses exactly the chosen fraction, so all views are corrupted alike.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from metacontrast.interfaces import BuildContext, ViewGenerator
from metacontrast.records import Batch, Mixing, Views


@attrs.define
class TabularViewsConfig:
    """``n_views`` views per row, the first ``clean_views`` of them the row unchanged
    (SAINT contrasts a clean row with one noisy view). ``cutmix_fraction``: share of a
    noisy row's columns replaced by another row's values. ``mixup_weight``: share of a
    noisy row's own embedding in its embedding mixup (1: no mixup)."""

    n_views: int = 2
    clean_views: int = 1
    cutmix_fraction: float = 0.3
    mixup_weight: float = 0.7

    def __attrs_post_init__(self) -> None:
        if self.n_views < 2:
            raise ValueError(f"n_views: a contrastive episode needs at least 2 views, got {self.n_views}")
        if not 0 <= self.clean_views < self.n_views:
            raise ValueError(f"clean_views: must be in [0, {self.n_views - 1}], got {self.clean_views}")
        if not 0.0 <= self.cutmix_fraction <= 1.0:
            raise ValueError(f"cutmix_fraction: must be in [0, 1], got {self.cutmix_fraction}")
        if not 0.0 < self.mixup_weight <= 1.0:
            raise ValueError(f"mixup_weight: must be in (0, 1], got {self.mixup_weight}")


def other_rows(b: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``(B,)``: for every row a uniformly drawn *other* row of the batch (itself when B is 1)."""
    if b == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    shift = torch.randint(1, b, (b,), generator=generator, device=device)
    return (torch.arange(b, device=device) + shift) % b


def cutmix_mask(b: int, f: int, k: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``(B, F)`` bool with exactly ``k`` True entries per row, at uniformly drawn columns."""
    chosen = torch.rand(b, f, generator=generator, device=device).argsort(dim=1)[:, :k]
    return torch.zeros(b, f, dtype=torch.bool, device=device).scatter_(1, chosen, True)


class TabularViews(ViewGenerator):
    """Rows ``(B, F)`` -> V views ``(B, F)``; params ``cutmix_mask (V, B, F)``,
    ``cutmix_partner (V, B)``, and, unless ``mixup_weight`` is 1, ``Views.embedding_mix``
    (``weight``/``partner (V, B)``; clean views: weight 1, partner itself)."""

    NAME = "tabular"
    Config = TabularViewsConfig
    MODALITIES = ("table",)

    def __init__(self, config: TabularViewsConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, batch: Batch, generator: torch.Generator) -> Views:
        c = self.config
        rows = batch.images
        b, f = rows.shape
        device = rows.device
        k = round(c.cutmix_fraction * f)
        itself = torch.arange(b, device=device)
        views, masks, cut_partners, mix_partners, weights = [], [], [], [], []
        for v in range(c.n_views):
            if v < c.clean_views:
                views.append(rows)
                masks.append(torch.zeros(b, f, dtype=torch.bool, device=device))
                cut_partners.append(itself)
                mix_partners.append(itself)
                weights.append(torch.ones(b, device=device))
                continue
            partner = other_rows(b, generator, device)
            mask = cutmix_mask(b, f, k, generator, device)
            views.append(torch.where(mask, rows[partner], rows))
            masks.append(mask)
            cut_partners.append(partner)
            mix_partners.append(other_rows(b, generator, device))
            weights.append(torch.full((b,), c.mixup_weight, device=device))
        params = {"cutmix_mask": torch.stack(masks), "cutmix_partner": torch.stack(cut_partners)}
        mixing = None
        if c.mixup_weight < 1.0:
            mixing = Mixing(weight=torch.stack(weights), partner=torch.stack(mix_partners))
        return Views(images=tuple(views), index=batch.index, params=params, embedding_mix=mixing)
