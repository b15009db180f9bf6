"""The trainable part of a method: encoder, head, solver and losses in one module.

One module (one ``forward``) so that ``DistributedDataParallel`` sees every parameter
that a step uses, the solver's and the losses' included.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from metacontrast import distributed
from metacontrast.interfaces import Encoder, Head, Loss, Solver
from metacontrast.records import (
    Embeddings,
    Episode,
    LossInputs,
    LossTerms,
    ShapeError,
    Views,
)
from metacontrast.teacher import EMATeacher


class Model(nn.Module):
    """``forward(views, episode) -> (LossTerms, Embeddings)``.

    ``forward_chunks``: the V views are encoded in this many forward passes (1: all
    ``V * B`` images at once; views of different sizes are always encoded separately).
    ``channels_last``: images enter the encoder in channels-last memory format.
    ``teacher``: an EMA copy of encoder and head; its projections of the views it embeds
    (``teacher.views``) are ``Embeddings.teacher_z`` (no gradient). Auxiliary images of
    ``Views.extra`` are encoded in their own pass (so they do not change the batch
    statistics the views see); their projections are ``extras[name]``.
    """

    def __init__(self, encoder: Encoder, head: Head, losses: Mapping[str, Loss],
                 weights: Mapping[str, float], solver: Solver | None = None,
                 forward_chunks: int = 1, channels_last: bool = False,
                 teacher: EMATeacher | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.solver = solver
        self.teacher = teacher
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = dict(weights)
        if forward_chunks < 1:
            raise ValueError(f"trainer.forward_chunks must be >= 1, got {forward_chunks}")
        self.forward_chunks = forward_chunks
        self.channels_last = channels_last

    def encode(self, images: Tensor, mix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Float images ``(N, C, H, W)`` or table rows ``(N, F)`` -> ``h (N, D)``;
        ``mix``: embedding mixup ``(weight (N,), partner (N,))`` (see ``Views``)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.encoder(images) if mix is None else self.encoder(images, mix=mix)

    def _embedding_mix(self, views: Views, v: int) -> tuple[Tensor, Tensor] | None:
        """View ``v``'s embedding mixup ``(weight (B,), partner (B,))``, if the views carry one."""
        if views.embedding_mix is None:
            return None
        if not getattr(self.encoder, "MIXES_EMBEDDINGS", False):
            raise ShapeError(f"Views: the views mix input embeddings (embedding_mix) but encoder "
                             f"{type(self.encoder).__name__} cannot; choose an encoder that sets "
                             f"MIXES_EMBEDDINGS or views without embedding mixup")
        return views.embedding_mix.weight[v], views.embedding_mix.partner[v]

    def online_views(self, n_views: int) -> tuple[int, ...]:
        """The views the online network embeds: all, or those the teacher does not own
        (``teacher.exclusive``)."""
        if self.teacher is None or not self.teacher.exclusive:
            return tuple(range(n_views))
        return tuple(v for v in range(n_views) if v not in (self.teacher.views or ()))

    def embed(self, views: Views) -> Embeddings:
        """The online views (all V unless ``teacher.exclusive``) -> ``Embeddings`` with
        ``h``, ``z`` of shape ``(V_online * B, D)``."""
        online = self.online_views(views.n_views)
        images = [views.images[v] for v in online]
        same_size = len({tuple(v.shape[1:]) for v in images}) == 1
        if views.embedding_mix is not None:  # partners are rows of the same view: a pass per view
            mixes = [self._embedding_mix(views, v) for v in online]
            h = torch.cat([self.encode(x, mix) for x, mix in zip(images, mixes, strict=True)])
        elif same_size:
            chunks = torch.cat(images).chunk(self.forward_chunks)
            h = torch.cat([self.encode(c) for c in chunks]) if len(chunks) > 1 else self.encode(chunks[0])
        else:
            h = torch.cat([self.encode(v) for v in images])
        extras = {name: self.head(self.encode(images)) for name, images in views.extra.items()}
        teacher_views: tuple[int, ...] = ()
        teacher_z = None
        if self.teacher is not None:
            teacher_views = self.teacher.views or tuple(range(views.n_views))
            if max(teacher_views) >= views.n_views:
                raise ShapeError(f"teacher.views: {list(teacher_views)} names a view the view "
                                 f"generator does not make ({views.n_views} views)")
            teacher_z = torch.cat([self._teacher(views.images[v], self._embedding_mix(views, v))
                                   for v in teacher_views])
        all_views = len(online) == views.n_views
        return Embeddings(h=h, z=self.head(h), extras=extras, teacher_views=teacher_views,
                          teacher_z=teacher_z, online_views=() if all_views else online,
                          n_views=views.n_views)

    def _teacher(self, images: Tensor, mix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        assert self.teacher is not None
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.teacher.shuffle_bn:
            if mix is not None:
                raise ShapeError("teacher.shuffle_bn: shuffling rows across ranks would separate mixed "
                                 "embeddings from their partners; set teacher.shuffle_bn=false")
            return distributed.shuffled_forward(self.teacher, images)
        return self.teacher(images, mix)

    def update_teacher(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step``: move the teacher (if any) towards encoder and head."""
        if self.teacher is not None:
            self.teacher.update(self.encoder, self.head, step, total_steps)

    def forward(self, views: Views, episode: Episode, memory: Tensor | None = None,
                memory_normalized: bool = False) -> tuple[LossTerms, Embeddings]:
        """``memory (M, D)``: the memory's keys read before the step, handed to the losses
        (``memory_normalized``: its rows are unit vectors)."""
        embeddings = self.embed(views)
        logits = self.solver(embeddings, episode) if self.solver is not None else None
        inputs = LossInputs(views=views, episode=episode, embeddings=embeddings, logits=logits,
                            memory=memory, memory_normalized=memory_normalized)
        terms: dict[str, Tensor] = {}
        for name, loss in self.losses.items():
            terms[name] = self.weights[name] * loss(inputs).float()
        return LossTerms(terms), embeddings
