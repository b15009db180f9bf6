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

import torch
from torch import Tensor, nn

from metacontrast.records import Embeddings, Episode, LossTerms, StepInputs, Views
from metacontrast_metaug.losses import MetAugLoss

CARRIER = "meta_gradients"


class MetAugObjective:
    """MetAug's two gradients as the default step's objective (its views, episode and
    memory handling stay the default step's). ``model``: the plain model (the one the
    trainer wraps; the first forward goes through the wrapped one in ``ctx.model``, so DDP
    synchronises as usual). ``loss_name``: the configured ``metaug`` loss whose MAGs are
    meta-trained."""

    def __init__(self, model: nn.Module, loss_name: str = "metaug") -> None:
        self.model = model
        self.loss_name = loss_name

    def __call__(self, views: Views, episode: Episode, memory: Tensor | None, memory_normalized: bool,
                 ctx: StepInputs) -> tuple[LossTerms, Embeddings]:
        model = self.model
        loss = model.losses[self.loss_name]
        assert isinstance(loss, MetAugLoss)
        cfg = loss.config
        mag_ids = {id(p) for p in loss.mags.parameters()}
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        base = [(n, p) for n, p in named if id(p) not in mag_ids]
        mags = [(n, p) for n, p in named if id(p) in mag_ids]

        with ctx.autocast():
            terms, embeddings = ctx.model(views, episode, memory)
        grads = _grads(terms.total, [p for _, p in base], create_graph=cfg.second_order)

        fast: dict[str, Tensor] = {n: p - cfg.inner_lr * (g if cfg.second_order else g.detach())
                                   for (n, p), g in zip(base, grads, strict=True)}
        state = {**fast, **dict(mags), **{n: b.clone() for n, b in model.named_buffers()}}
        with ctx.autocast():
            fast_terms, fast_embeddings = torch.func.functional_call(model, state, (views, episode, memory))
            meta = fast_terms.total + cfg.alpha * loss.regularization(fast_embeddings, episode)
        meta_grads = _grads(meta, [p for _, p in mags], create_graph=False)

        pairs = zip(base + mags, [*grads, *meta_grads], strict=True)
        zero = torch.zeros((), device=terms.total.device)
        carrier = sum(((p * g.detach()).sum() for (_, p), g in pairs), start=zero)
        out = {name: value.detach() for name, value in terms.terms.items()}
        out[CARRIER] = carrier - carrier.detach()
        return LossTerms(out), embeddings


def _grads(value: Tensor, params: list[Tensor], create_graph: bool) -> list[Tensor]:
    """``d value / d p`` for each parameter (zeros where ``value`` does not depend on it)."""
    found = torch.autograd.grad(value, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]
