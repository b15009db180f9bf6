"""The train step of every method: views -> episode -> objective -> loss terms, then
the updates that follow the optimizer step (teacher, memory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from metacontrast import distributed
from metacontrast.interfaces import EpisodeBuilder, Memory, ViewGenerator, ViewTransform
from metacontrast.records import Batch, Embeddings, Episode, LossTerms, StepInputs, Views


class Objective(Protocol):
    """What a step computes from its views, episode and memory: ``(LossTerms,
    Embeddings)``. ``memory (M, D)``: the memory's keys read before the step (``None``
    without one); ``memory_normalized``: its rows are unit vectors."""

    def __call__(self, views: Views, episode: Episode, memory: Tensor | None, memory_normalized: bool,
                 ctx: StepInputs) -> tuple[LossTerms, Embeddings]: ...


def model_objective(views: Views, episode: Episode, memory: Tensor | None, memory_normalized: bool,
                    ctx: StepInputs) -> tuple[LossTerms, Embeddings]:
    """The default objective: the (wrapped) model's weighted losses, under autocast."""
    with ctx.autocast():
        return ctx.model(views, episode, memory, memory_normalized)


class DefaultTrainStep:
    """One batch through the same calls for every method: views from the view generator
    (then the view transforms), an episode from the builder, loss terms from the
    ``objective`` (default: the model's losses; MetAug's bi-level step is another
    objective). Backward and the optimizer belong to the trainer; what follows the
    optimizer step belongs here, in one place (``after_optimizer_step``): the EMA teacher
    moves, then the memory is written.

    With a ``memory``: the losses read the memory's keys as they were before the step;
    each micro-batch's keys (``Memory.keys_of``) wait until the optimizer step, are then
    gathered from all ranks (rank order, no gradient) and written. Keys of a step that
    was skipped (non-finite values) are dropped."""

    def __init__(self, view_generator: ViewGenerator, episode_builder: EpisodeBuilder,
                 view_transforms: Sequence[ViewTransform] = (), memory: Memory | None = None,
                 model: Any = None, objective: Objective = model_objective) -> None:
        self.view_generator = view_generator
        self.view_transforms = list(view_transforms)
        self.episode_builder = episode_builder
        self.memory = memory
        self.model = model  # the plain model (its teacher moves after each optimizer step)
        self.objective = objective
        self._pending: list[tuple[int, Tensor, Tensor]] = []  # (step, keys, ids) per micro-batch

    def views(self, batch: Batch, ctx: StepInputs) -> Views:
        """The generator's views, then every view transform in order (float32)."""
        views = self.view_generator(batch, ctx.generator)
        with torch.autocast(batch.images.device.type, enabled=False):
            for transform in self.view_transforms:
                views = transform(views, ctx.generator)
        return views

    def __call__(self, batch: Batch, ctx: StepInputs) -> LossTerms:
        """Batch -> Views -> Episode -> (Embeddings, Logits) -> LossTerms."""
        views = self.views(batch, ctx)
        episode = self.episode_builder(views)
        keys = self.memory.read() if self.memory is not None else None
        unit = self.memory is not None and self.memory.normalized
        terms, embeddings = self.objective(views, episode, keys, unit, ctx)
        self.keep_keys(ctx.step, embeddings, views)
        return terms

    def keep_keys(self, step: int, embeddings: Embeddings, views: Views) -> None:
        """Hold this micro-batch's memory keys until the optimizer step (none without a memory)."""
        if self.memory is not None:
            self._pending = [p for p in self._pending if p[0] == step]  # drop a skipped step's keys
            self._pending.append((step, *self.memory.keys_of(embeddings, views)))

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (0-based) of ``total_steps``: the EMA teacher moves
        towards encoder and head, then this step's keys, gathered from every rank, are
        written into the memory. Not called for a skipped step."""
        if self.model is not None:
            self.model.update_teacher(step, total_steps)
        if self.memory is None or not self._pending:
            return
        last = self._pending[-1][0]
        for pending_step, keys, ids in self._pending:
            if pending_step == last:
                self.memory.update(distributed.gather_no_grad(keys), distributed.gather_no_grad(ids))
        self._pending = []
