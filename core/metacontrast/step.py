"""The default train step: views -> episode -> model -> loss terms (-> memory write)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metacontrast import distributed
from metacontrast.interfaces import EpisodeBuilder, Memory, ViewGenerator, ViewTransform
from metacontrast.records import Batch, Embeddings, LossTerms, StepInputs, Views


class DefaultTrainStep:
    """Views from the view generator (then the view transforms), an episode from the
    builder, loss terms from the (wrapped) model. Backward, the optimizer and the EMA
    teacher's update belong to the trainer.

    With a ``memory``: the losses read the memory's keys as they were before the step;
    each micro-batch's keys (``Memory.keys_of``) wait until the optimizer step, are then
    gathered from all ranks (rank order, no gradient) and written. Keys of a step that
    was skipped (non-finite values) are dropped."""

    def __init__(self, view_generator: ViewGenerator, episode_builder: EpisodeBuilder,
                 view_transforms: Sequence[ViewTransform] = (), memory: Memory | None = None) -> None:
        self.view_generator = view_generator
        self.view_transforms = list(view_transforms)
        self.episode_builder = episode_builder
        self.memory = memory
        self._pending: list[tuple[int, Tensor, Tensor]] = []  # (step, keys, ids) per micro-batch

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
        keys = self.memory.read() if self.memory is not None else None
        unit = self.memory is not None and self.memory.normalized
        with ctx.autocast():
            terms, embeddings = ctx.model(views, episode, keys, unit)
        self.keep_keys(ctx.step, embeddings, views)
        return terms

    def keep_keys(self, step: int, embeddings: Embeddings, views: Views) -> None:
        """Hold this micro-batch's memory keys until the optimizer step (none without a memory)."""
        if self.memory is not None:
            self._pending = [p for p in self._pending if p[0] == step]  # drop a skipped step's keys
            self._pending.append((step, *self.memory.keys_of(embeddings, views)))

    def on_optimizer_step(self) -> None:
        """Write this step's keys, gathered from every rank, into the memory."""
        if self.memory is None or not self._pending:
            return
        last = self._pending[-1][0]
        for step, keys, ids in self._pending:
            if step == last:
                self.memory.update(distributed.gather_no_grad(keys), distributed.gather_no_grad(ids))
        self._pending = []
