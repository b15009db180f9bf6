"""The default train step: views -> episode -> model -> loss terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metacontrast.interfaces import EpisodeBuilder, ViewGenerator, ViewTransform
from metacontrast.records import Batch, LossTerms, StepInputs, Views


class DefaultTrainStep:
    """Views from the view generator (then the view transforms), an episode from the
    builder, loss terms from the (wrapped) model. Backward, the optimizer and the EMA
    teacher's update belong to the trainer."""

    def __init__(self, view_generator: ViewGenerator, episode_builder: EpisodeBuilder,
                 view_transforms: Sequence[ViewTransform] = ()) -> None:
        self.view_generator = view_generator
        self.view_transforms = list(view_transforms)
        self.episode_builder = episode_builder

    def views(self, batch: Batch, ctx: StepInputs) -> Views:
        """The generator's views, then every view transform in order (float32)."""
        views = self.view_generator(batch, ctx.generator)
        with torch.autocast(batch.images.device.type, enabled=False):
            for transform in self.view_transforms:
                views = transform(views, ctx.generator)
        return views

    def __call__(self, batch: Batch, ctx: StepInputs) -> LossTerms:
        views = self.views(batch, ctx)
        episode = self.episode_builder(views)
        with ctx.autocast():
            terms, _ = ctx.model(views, episode)
        return terms

    def on_optimizer_step(self) -> None:
        """Nothing to update: the default method has no teacher and no memory."""
