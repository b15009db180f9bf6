"""Built-in episode builders: m views of b images -> a b-way task (per rank, or spanning
all ranks), m1 support and m2 = m - m1 query views per class, optionally split into tasks."""

from __future__ import annotations

import attrs

from metacontrast.interfaces import BuildContext, EpisodeBuilder
from metacontrast.records import Episode, Views


@attrs.define
class NWayKShotConfig:
    """``support_views``: m1, views per image in the support (the rest, m2, are queries);
    0 gives SimCLR's all-pairs episode (every view-sample is support and query).
    ``tasks``: split the classes (images) into this many equal tasks, each solved on its
    own. ``span_ranks``: under DDP, the classes are the images of all ranks (solvers gather
    the embeddings); otherwise each rank solves its own tasks."""

    support_views: int = 1
    tasks: int = 1
    span_ranks: bool = True

    def __attrs_post_init__(self) -> None:
        if self.support_views < 0:
            raise ValueError(f"support_views must be >= 0, got {self.support_views}")
        if self.tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {self.tasks}")


class NWayKShotEpisode(EpisodeBuilder):
    """B-way (W*B-way across ranks) episode from V views: ``support_views`` supports per
    class, the rest queries, split into ``tasks`` tasks (see ``Episode.from_views``)."""

    NAME = "n_way_k_shot"
    Config = NWayKShotConfig

    def __init__(self, config: NWayKShotConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.rank, self.world_size = (context.rank, context.world_size) if config.span_ranks else (0, 1)

    def __call__(self, views: Views) -> Episode:
        return Episode.from_views(views, self.config.support_views, self.config.tasks,
                                  rank=self.rank, world_size=self.world_size)


class PairsEpisode(NWayKShotEpisode):
    """SimCLR's all-pairs episode: the builder above with m1 = 0 (every view-sample scored
    against all V*B - 1 others, across ranks)."""

    NAME = "pairs"
    Config = attrs.make_class("PairsConfig", {})

    def __init__(self, config: object, context: BuildContext) -> None:
        super().__init__(NWayKShotConfig(support_views=0), context)
