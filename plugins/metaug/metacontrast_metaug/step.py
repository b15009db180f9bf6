"""MetAug's bi-level step (Algorithm 1) as a train step.

One forward of the batch gives ``L = L_MetAug(theta, vartheta, omega)`` (plus any other
configured loss). Its gradient ``g`` with respect to the encoders' and heads' parameters
``theta`` is both

- the ordinary update of ``theta`` (MAGs fixed: ``omega`` receives nothing from it), and
- the fast weights ``theta' = theta - l * g`` (equation 3), kept differentiable in
  ``omega`` (``create_graph``) when ``second_order``.

A second forward with the fast weights (``torch.func.functional_call``, on a copy of the
BatchNorm buffers so that running statistics move once per step) gives the meta
objective ``L_MetAug(theta', omega) + alpha * R_sigma`` (equation 6), whose gradient with
respect to ``omega`` only is the MAGs' update. With ``second_order=false`` the fast
weights are constants and only the objective's direct dependence on ``omega`` remains.

Both gradients reach the trainer through one carrier term, ``sum(p * grad_p) - (the
same, detached)``: its value is 0 and its gradient is exactly ``grad_p`` for every
parameter, so the trainer's backward, gradient clipping, DDP's all-reduce, accumulation
and the optimizer apply them unchanged. Both gradients are taken at the same
``theta`` (the ordinary and the meta step of Algorithm 1 interleaved per batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metacontrast.interfaces import EpisodeBuilder, Memory, ViewGenerator, ViewTransform
from metacontrast.records import Batch, LossTerms, StepInputs
from metacontrast.step import DefaultTrainStep
from metacontrast_metaug.losses import MetAugLoss

CARRIER = "meta_gradients"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class MetAugTrainStep(DefaultTrainStep):
    """The default step's views, episode and memory handling, with MetAug's two
    gradients. ``loss_name``: the configured ``metaug`` loss whose MAGs are meta-trained."""

    def __init__(self, view_generator: ViewGenerator, episode_builder: EpisodeBuilder,
                 view_transforms: Sequence[ViewTransform] = (), memory: Memory | None = None,
                 loss_name: str = "metaug") -> None:
        super().__init__(view_generator, episode_builder, view_transforms, memory)
        self.loss_name = loss_name

    def __call__(self, batch: Batch, ctx: StepInputs) -> LossTerms:
        views = self.views(batch, ctx)
        episode = self.episode_builder(views)
        keys = self.memory.read() if self.memory is not None else None
        model = _unwrap(ctx.model)
        loss = model.losses[self.loss_name]
        assert isinstance(loss, MetAugLoss)
        cfg = loss.config
        mag_ids = {id(p) for p in loss.mags.parameters()}
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        base = [(n, p) for n, p in named if id(p) not in mag_ids]
        mags = [(n, p) for n, p in named if id(p) in mag_ids]

        with ctx.autocast():
            terms, embeddings = ctx.model(views, episode, keys)
        grads = _grads(terms.total, [p for _, p in base], create_graph=cfg.second_order)

        fast: dict[str, Tensor] = {n: p - cfg.inner_lr * (g if cfg.second_order else g.detach())
                                   for (n, p), g in zip(base, grads, strict=True)}
        state = {**fast, **dict(mags), **{n: b.clone() for n, b in model.named_buffers()}}
        with ctx.autocast():
            fast_terms, fast_embeddings = torch.func.functional_call(model, state, (views, episode, keys))
            meta = fast_terms.total + cfg.alpha * loss.regularization(fast_embeddings, episode)
        meta_grads = _grads(meta, [p for _, p in mags], create_graph=False)

        pairs = zip(base + mags, [*grads, *meta_grads], strict=True)
        zero = torch.zeros((), device=terms.total.device)
        carrier = sum(((p * g.detach()).sum() for (_, p), g in pairs), start=zero)
        self.keep_keys(ctx.step, embeddings, views)
        out = {name: value.detach() for name, value in terms.terms.items()}
        out[CARRIER] = carrier - carrier.detach()
        return LossTerms(out)


def _grads(value: Tensor, params: list[Tensor], create_graph: bool) -> list[Tensor]:
    """``d value / d p`` for each parameter (zeros where ``value`` does not depend on it)."""
    found = torch.autograd.grad(value, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]
