"""The bi-level step: the MAGs' gradient is the meta objective's gradient (checked by
finite differences on a tiny float64 model, second-order path included); the encoders
and heads get the ordinary gradient of L_MetAug; BatchNorm statistics move once."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metacontrast.interfaces import BuildContext
from metacontrast.model import Model
from metacontrast.records import Batch, Episode, LossInputs, StepInputs, Views
from metacontrast.step import DefaultTrainStep
from metacontrast_metaug.heads import SplitProjection, SplitProjectionConfig
from metacontrast_metaug.losses import MetAugLoss, MetAugLossConfig
from metacontrast_metaug.step import CARRIER, MetAugObjective


class TwoPartEncoder(nn.Module):
    """``(N, 2, 3, 3)`` -> ``(N, 2 * 3)``: one small tanh layer per channel view."""

    parts = 2
    out_dim = 6

    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nn.Sequential(nn.Flatten(), nn.Linear(9, 3), nn.BatchNorm1d(3) if batchnorm
                                                else nn.Identity(), nn.Tanh()) for _ in range(2))

    def forward(self, x):
        return torch.cat([net(x[:, j]) for j, net in enumerate(self.nets)], dim=1)


class FixedViews(nn.Module):
    def __init__(self, images):
        super().__init__()
        self.images = images

    def forward(self, batch, generator):
        return Views(images=(self.images,), index=batch.index)


def _setup(second_order=True, batchnorm=False, seed=0):
    torch.manual_seed(seed)
    ctx = BuildContext(in_channels=2, image_size=3, mean=(0.0,) * 2, std=(1.0,) * 2, encoder_dim=6,
                       encoder_parts=2)
    head = SplitProjection(SplitProjectionConfig(out_dim=3), ctx)
    ctx = ctx.evolve(head_dim=head.out_dim, head_parts=head.parts)
    cfg = MetAugLossConfig(form="reduced", beta=2.0, delta=0.7, alpha=0.5, inner_lr=0.8,
                           second_order=second_order, mag_hidden=4)
    model = Model(TwoPartEncoder(batchnorm), head, {"metaug": MetAugLoss(cfg, ctx)}, {"metaug": 1.0}).double()
    images = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    step = DefaultTrainStep(FixedViews(images), lambda v: Episode.from_views(v), model=model,
                            objective=MetAugObjective(model, "metaug"))
    batch = Batch(images=torch.zeros(5, 2, 3, 3, dtype=torch.uint8), index=torch.arange(5))
    return model, step, batch, images


def _run_step(model, step, batch):
    terms = step(batch, StepInputs(generator=torch.Generator(), step=0, model=model))
    model.zero_grad()
    terms.total.backward()
    return terms


def _split(model):
    mag_ids = {id(p) for p in model.losses["metaug"].mags.parameters()}
    base = {n: p for n, p in model.named_parameters() if id(p) not in mag_ids}
    mags = {n: p for n, p in model.named_parameters() if id(p) in mag_ids}
    return base, mags


def meta_objective(model, images, mag_values):
    """J(omega) = L_MetAug(theta - l grad_theta L_MetAug(theta, omega), omega) + alpha R_sigma,
    evaluated directly in float64 (the model's loss terms are rounded to float32, too
    coarse for finite differences; no graph is kept between the two passes)."""
    model = copy.deepcopy(model)
    base, mags = _split(model)
    with torch.no_grad():
        for name, value in mag_values.items():
            mags[name].copy_(value)
    views = Views(images=(images,), index=torch.arange(images.shape[0]))
    episode = Episode.from_views(views)
    loss = model.losses["metaug"]

    def l_metaug():
        emb = model.embed(views)
        return loss(LossInputs(views=views, episode=episode, embeddings=emb)), emb

    grads = torch.autograd.grad(l_metaug()[0], list(base.values()))
    with torch.no_grad():
        for p, g in zip(base.values(), grads, strict=True):
            p -= loss.config.inner_lr * g
        value, emb = l_metaug()
        return (value + loss.config.alpha * loss.regularization(emb, episode)).item()


def _finite_difference(model, images, eps=1e-6):
    _, mags = _split(model)
    values = {n: p.detach().clone() for n, p in mags.items()}
    out = {}
    for name, value in values.items():
        grad = torch.zeros_like(value)
        for i in range(value.numel()):
            plus, minus = dict(values), dict(values)
            plus[name] = value.clone().view(-1).index_add_(0, torch.tensor([i]), torch.tensor([eps], dtype=value.dtype)).view_as(value)
            minus[name] = value.clone().view(-1).index_add_(0, torch.tensor([i]), torch.tensor([-eps], dtype=value.dtype)).view_as(value)
            grad.view(-1)[i] = (meta_objective(model, images, plus) - meta_objective(model, images, minus)) / (2 * eps)
        out[name] = grad
    return out


def test_mag_gradient_equals_finite_differences_of_the_meta_objective():
    model, step, batch, images = _setup()
    expected = _finite_difference(model, images)
    terms = _run_step(model, step, batch)
    assert terms.terms[CARRIER].item() == 0.0
    _, mags = _split(model)
    for name, p in mags.items():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-8, msg=name)


def test_first_order_drops_the_path_through_the_fast_weights():
    model, step, batch, images = _setup(second_order=False)
    expected = _finite_difference(model, images)
    _run_step(model, step, batch)
    _, mags = _split(model)
    gap = max((p.grad - expected[n]).abs().max().item() for n, p in mags.items())
    scale = max(g.abs().max().item() for g in expected.values())
    assert gap > 1e-3 * scale  # the second-order term is missing


def test_encoders_and_heads_get_the_ordinary_gradient_with_mags_fixed():
    model, step, batch, images = _setup(seed=3)
    reference = copy.deepcopy(model)
    views = Views(images=(images,), index=torch.arange(5))
    terms, _ = reference(views, Episode.from_views(views))
    terms.total.backward()
    _run_step(model, step, batch)
    base, _ = _split(model)
    ref_base, _ = _split(reference)
    for name, p in base.items():
        torch.testing.assert_close(p.grad, ref_base[name].grad, rtol=1e-10, atol=1e-12, msg=name)


def test_batchnorm_statistics_move_once_per_step():
    model, step, batch, images = _setup(batchnorm=True, seed=4)
    reference = copy.deepcopy(model)
    views = Views(images=(images,), index=torch.arange(5))
    reference(views, Episode.from_views(views))
    _run_step(model, step, batch)
    for (name, b), (_, ref) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(b, ref, msg=name)


@pytest.mark.parametrize("margin", ["medium", "small"])
def test_other_margins_run_through_the_step(margin):
    model, step, batch, _ = _setup(seed=5)
    model.losses["metaug"].config.margin = margin
    _run_step(model, step, batch)
    _, mags = _split(model)
    assert all(torch.isfinite(p.grad).all() for p in mags.values())
