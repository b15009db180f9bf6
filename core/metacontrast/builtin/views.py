"""Built-in view generator: V un-augmented, normalised copies (for evaluation and tests)."""

from __future__ import annotations

import attrs
import torch

from metacontrast.imageops import normalize
from metacontrast.interfaces import BuildContext, ViewGenerator
from metacontrast.records import Batch, Views


@attrs.define
class IdentityViewsConfig:
    """``n_views``: how many copies of each image."""

    n_views: int = 2


class IdentityViews(ViewGenerator):
    """``Batch (B, C, H, W) uint8 -> Views`` of ``n_views`` identical normalised copies."""

    NAME = "identity"
    Config = IdentityViewsConfig

    def __init__(self, config: IdentityViewsConfig, context: BuildContext) -> None:
        super().__init__()
        self.n_views = config.n_views
        self.mean, self.std = context.mean, context.std

    def forward(self, batch: Batch, generator: torch.Generator) -> Views:
        x = normalize(batch.images, self.mean, self.std)
        return Views(images=(x,) * self.n_views, index=batch.index)
