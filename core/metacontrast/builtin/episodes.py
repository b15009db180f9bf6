"""Built-in episode builders."""

from __future__ import annotations

import attrs

from metacontrast.interfaces import EpisodeBuilder
from metacontrast.records import Episode, Views


class PairsEpisode(EpisodeBuilder):
    """SimCLR's all-pairs episode: B-way, each image a class, every view-sample scored
    against all V*B - 1 others (see ``Episode.pairs``)."""

    NAME = "pairs"

    def __call__(self, views: Views) -> Episode:
        return Episode.pairs(views)


@attrs.define
class NWayKShotConfig:
    """``support_views``: views per image used as support (K); the rest are queries."""

    support_views: int = 1


class NWayKShotEpisode(EpisodeBuilder):
    """B-way K-shot episode from V views: ``support_views`` supports, the rest queries."""

    NAME = "n_way_k_shot"
    Config = NWayKShotConfig

    def __call__(self, views: Views) -> Episode:
        return Episode.n_way_k_shot(views, self.config.support_views)
