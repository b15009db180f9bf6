"""MoCo's queue InfoNCE against the formula written out with loops."""

from __future__ import annotations

import math

import pytest
import torch

from metacontrast.interfaces import BuildContext
from metacontrast.records import Embeddings, Episode, LossInputs, ShapeError, Views
from metacontrast_moco.infonce import QueueInfoNCEConfig, QueueInfoNCELoss, queue_infonce

CTX = BuildContext(in_channels=3, image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)


def _cos(a, b):
    return float((a @ b) / (a.norm() * b.norm()))


def _reference(q, k, queue, t):
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(_cos(q[i], k[i]) / t)
        neg = sum(math.exp(_cos(q[i], queue[m]) / t) for m in range(queue.shape[0]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


@pytest.mark.parametrize(("b", "m", "t"), [(4, 7, 0.2), (9, 33, 0.07), (1, 1, 1.0)])
def test_queue_infonce_is_the_formula(b, m, t):
    g = torch.Generator().manual_seed(b + m)
    q, k, queue = (torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (b, b, m))
    got = queue_infonce(q, k, queue, t)
    assert got.item() == pytest.approx(_reference(q, k, queue, t), rel=1e-5)


def test_only_the_query_gets_a_gradient():
    q = torch.randn(4, 5, requires_grad=True)
    k = torch.randn(4, 5, requires_grad=True)
    queue = torch.randn(6, 5, requires_grad=True)
    queue_infonce(q, k, queue, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None


def _inputs(b=3, n_views=2, teacher_views=(1,), memory=True):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n_views * b, 5, generator=g)
    teacher = torch.randn(len(teacher_views) * b, 5, generator=g)
    views = Views(images=(torch.zeros(b, 3, 8, 8),) * n_views, index=torch.arange(b))
    emb = Embeddings(h=z, z=z, teacher_z=teacher, teacher_views=teacher_views, n_views=n_views)
    queue = torch.randn(7, 5, generator=g) if memory else None
    return LossInputs(views=views, episode=Episode.from_views(views), embeddings=emb, memory=queue), z, teacher, queue


def test_loss_reads_the_query_view_the_teacher_key_and_the_memory():
    inputs, z, teacher, queue = _inputs()
    loss = QueueInfoNCELoss(QueueInfoNCEConfig(temperature=0.2), CTX)
    assert loss(inputs).item() == pytest.approx(_reference(z[:3], teacher, queue, 0.2), rel=1e-5)


def test_symmetric_loss_averages_both_directions():
    inputs, z, teacher, queue = _inputs(teacher_views=(0, 1))
    loss = QueueInfoNCELoss(QueueInfoNCEConfig(temperature=0.5, symmetric=True), CTX)
    expected = (_reference(z[:3], teacher[3:], queue, 0.5) + _reference(z[3:], teacher[:3], queue, 0.5)) / 2
    assert loss(inputs).item() == pytest.approx(expected, rel=1e-5)


def test_errors_name_what_is_missing():
    loss = QueueInfoNCELoss(QueueInfoNCEConfig(), CTX)
    with pytest.raises(ShapeError, match="memory=queue"):
        loss(_inputs(memory=False)[0])
    with pytest.raises(ShapeError, match="teacher.views to include 1"):
        loss(_inputs(teacher_views=(0,))[0])
    with pytest.raises(ShapeError, match="query_view=0, key_view=3"):
        QueueInfoNCELoss(QueueInfoNCEConfig(key_view=3), CTX)(_inputs()[0])
    with pytest.raises(ValueError, match="two different views"):
        QueueInfoNCEConfig(query_view=1, key_view=1)
