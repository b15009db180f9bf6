"""The default train step: views -> episode -> model -> loss terms."""

from __future__ import annotations

from metacontrast.interfaces import EpisodeBuilder, ViewGenerator
from metacontrast.records import Batch, LossTerms, StepInputs


class DefaultTrainStep:
    """Views from the view generator, an episode from the builder, loss terms from the
    (wrapped) model. Backward and the optimizer belong to the trainer."""

    def __init__(self, view_generator: ViewGenerator, episode_builder: EpisodeBuilder) -> None:
        self.view_generator = view_generator
        self.episode_builder = episode_builder

    def __call__(self, batch: Batch, ctx: StepInputs) -> LossTerms:
        views = self.view_generator(batch, ctx.generator)
        episode = self.episode_builder(views)
        with ctx.autocast():
            terms, _ = ctx.model(views, episode)
        return terms

    def on_optimizer_step(self) -> None:
        """Nothing to update: the default method has no teacher and no memory."""
