"""CLSA's DDM against equations 3 and 4 written out with loops."""

from __future__ import annotations

import math

import pytest
import torch

from metacontrast.builder import component_config
from metacontrast.config import ConfigError
from metacontrast.interfaces import BuildContext
from metacontrast.records import Embeddings, Episode, LossInputs, ShapeError, Views
from metacontrast_clsa.ddm import DDMConfig, DDMLoss, ddm_loss

CTX = BuildContext(in_channels=3, image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)


def _sim(a, b):
    return float((a @ b) / (a.norm() * b.norm()))


def _p(query, positive, queue, t):
    """Equation 3: [p(z_i | q), p(z_1 | q), ..., p(z_K | q)]."""
    scores = [math.exp(_sim(query, positive) / t)] + [math.exp(_sim(query, queue[k]) / t)
                                                      for k in range(queue.shape[0])]
    total = sum(scores)
    return [s / total for s in scores]


def _reference(weak, strongs, keys, queue, t):
    """Equation 4, summed over the strong views."""
    total = 0.0
    for strong in strongs:
        loss = 0.0
        for i in range(weak.shape[0]):
            p_weak, p_strong = _p(weak[i], keys[i], queue, t), _p(strong[i], keys[i], queue, t)
            loss += -sum(p_weak[k] * math.log(p_strong[k]) for k in range(1, len(p_weak)))
            loss += -p_weak[0] * math.log(p_strong[0])
        total += loss / weak.shape[0]
    return total


@pytest.mark.parametrize(("b", "k", "n_strong", "t"), [(3, 5, 1, 0.2), (6, 17, 3, 0.07), (1, 1, 5, 1.0)])
def test_ddm_is_equations_3_and_4(b, k, n_strong, t):
    g = torch.Generator().manual_seed(b * 10 + k)
    weak, keys, queue = (torch.randn(n, 6, generator=g, dtype=torch.float64) for n in (b, b, k))
    strongs = [torch.randn(b, 6, generator=g, dtype=torch.float64) for _ in range(n_strong)]
    assert ddm_loss(weak, strongs, keys, queue, t).item() == pytest.approx(
        _reference(weak, strongs, keys, queue, t), rel=1e-5)


def test_gradient_flows_only_through_the_strong_queries():
    weak, keys, queue = (torch.randn(n, 6, requires_grad=True) for n in (4, 4, 9))
    strong = torch.randn(4, 6, requires_grad=True)
    ddm_loss(weak, [strong], keys, queue, 0.2).backward()
    assert strong.grad is not None and strong.grad.abs().sum() > 0
    assert weak.grad is None and keys.grad is None and queue.grad is None


def test_ddm_is_minimal_when_the_strong_query_equals_the_weak_one():
    """Cross-entropy to a fixed target is smallest at the target: equal queries give the
    target's entropy, and moving the strong query away raises the loss."""
    g = torch.Generator().manual_seed(0)
    weak, keys, queue = (torch.randn(n, 6, generator=g) for n in (5, 5, 12))
    at_target = ddm_loss(weak, [weak.clone()], keys, queue, 0.2)
    p = torch.softmax(torch.cat([torch.cosine_similarity(weak, keys)[:, None],
                                 torch.nn.functional.normalize(weak, dim=1) @
                                 torch.nn.functional.normalize(queue, dim=1).T], 1) / 0.2, 1)
    entropy = -(p * p.log()).sum(1).mean()
    assert at_target.item() == pytest.approx(entropy.item(), rel=1e-4)
    assert ddm_loss(weak, [weak + 0.5 * torch.randn(5, 6, generator=g)], keys, queue, 0.2) > at_target


def test_ddm_is_stable_at_a_tiny_temperature():
    g = torch.Generator().manual_seed(1)
    weak, strong, keys, queue = (torch.randn(n, 6, generator=g) for n in (4, 4, 4, 50))
    value = ddm_loss(weak, [strong], keys, queue, 1e-3)  # logits up to 1000: exp overflows float32
    assert torch.isfinite(value)


def _inputs(n_views=4, teacher_views=(1,), memory=True):
    b = 3
    g = torch.Generator().manual_seed(2)
    z = torch.randn(n_views * b, 6, generator=g)
    teacher = torch.randn(len(teacher_views) * b, 6, generator=g)
    views = Views(images=(torch.zeros(b, 3, 8, 8),) * n_views, index=torch.arange(b))
    emb = Embeddings(h=z, z=z, teacher_z=teacher, teacher_views=teacher_views, n_views=n_views)
    queue = torch.randn(8, 6, generator=g) if memory else None
    return LossInputs(views=views, episode=Episode.from_views(views), embeddings=emb, memory=queue), z, teacher, queue


def test_loss_uses_every_view_after_the_weak_and_key_views_as_strong():
    inputs, z, teacher, queue = _inputs(n_views=4)
    got = DDMLoss(DDMConfig(), CTX)(inputs)
    expected = _reference(z[:3].double(), [z[6:9].double(), z[9:].double()], teacher.double(), queue.double(), 0.2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    only_first = DDMLoss(DDMConfig(strong_views=[2]), CTX)(inputs)
    assert only_first.item() == pytest.approx(
        _reference(z[:3].double(), [z[6:9].double()], teacher.double(), queue.double(), 0.2), rel=1e-5)


def test_errors_name_the_fix():
    loss = DDMLoss(DDMConfig(), CTX)
    with pytest.raises(ShapeError, match="memory=queue"):
        loss(_inputs(memory=False)[0])
    with pytest.raises(ShapeError, match="views=clsa_single"):
        loss(_inputs(n_views=2)[0])
    with pytest.raises(ConfigError, match="loss.ddm: strong_views"):
        component_config(DDMLoss, "loss.ddm", {"strong_views": [0, 2]})
    assert component_config(DDMLoss, "loss.ddm", {"strong_views": [2, 3]}).strong_views == [2, 3]
