"""Triplet and N-pair losses against the formulas written out anchor by anchor."""

import math

import pytest
import torch

from metacontrast.records import Embeddings, Episode, LossInputs, ShapeError, Views
from metacontrast_classic.npair import NPairConfig, NPairLoss
from metacontrast_classic.triplet import TripletConfig, TripletLoss


def _inputs(z_a, z_b):
    b = z_a.shape[0]
    views = Views(images=(torch.zeros(b, 1, 4, 4),) * 2, index=torch.arange(b))
    z = torch.cat([z_a, z_b])
    return LossInputs(views=views, episode=Episode.from_views(views), embeddings=Embeddings(h=z, z=z, n_views=views.n_views))


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _sqdist(u, v):
    return sum((x - y) ** 2 for x, y in zip(u, v, strict=True))


def triplet_reference(z_a, z_b, margin, mining, normalize=True):
    """Rows: view 0 of images 0..B-1, then view 1; row r's positive is the other view of
    its image, its negatives all rows of other images. Plain Python lists."""
    b = z_a.shape[0]
    rows = [z_a[i].tolist() for i in range(b)] + [z_b[i].tolist() for i in range(b)]
    if normalize:
        rows = [_unit(r) for r in rows]
    image = [i % b for i in range(2 * b)]
    terms = []
    for r in range(2 * b):
        p = r + b if r < b else r - b
        d_ap = _sqdist(rows[r], rows[p])
        negatives = [(_sqdist(rows[r], rows[k]), k) for k in range(2 * b) if image[k] != image[r]]
        if mining == "all":
            terms += [max(0.0, d_ap - d_an + margin) for d_an, _ in negatives]
            continue
        if mining == "hard":
            d_an = min(negatives)[0]
        else:
            farther = [d for d, _ in negatives if d > d_ap]
            d_an = min(farther) if farther else max(d for d, _ in negatives)
        terms.append(max(0.0, d_ap - d_an + margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("mining", ["all", "hard", "semi_hard"])
@pytest.mark.parametrize(("b", "d", "margin"), [(2, 3, 0.2), (6, 8, 0.5), (12, 4, 1.5)])
def test_triplet_matches_loop(mining, b, d, margin):
    g = torch.Generator().manual_seed(b * 31 + d)
    z_a, z_b = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    loss = TripletLoss(TripletConfig(margin=margin, mining=mining), None)(_inputs(z_a, z_b))
    assert loss.item() == pytest.approx(triplet_reference(z_a, z_b, margin, mining), rel=1e-5, abs=1e-6)


def test_semi_hard_falls_back_to_the_farthest_negative_and_gradients_flow():
    # every negative closer than the positive: the fallback term is the farthest negative's
    z_a = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2]], dtype=torch.float64)
    z_b = -z_a
    ref = triplet_reference(z_a, z_b, 0.3, "semi_hard")
    z_a.requires_grad_(True)
    loss = TripletLoss(TripletConfig(margin=0.3, mining="semi_hard"), None)(_inputs(z_a, z_b))
    assert loss.item() == pytest.approx(ref, rel=1e-6) and loss.item() > 0
    loss.backward()
    assert z_a.grad is not None and z_a.grad.abs().sum() > 0


def test_triplet_unnormalised_matches_loop():
    g = torch.Generator().manual_seed(9)
    z_a, z_b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    loss = TripletLoss(TripletConfig(margin=1.0, mining="all", normalize=False), None)(_inputs(z_a, z_b))
    assert loss.item() == pytest.approx(triplet_reference(z_a, z_b, 1.0, "all", normalize=False), rel=1e-6)


def npair_reference(z_a, z_b, similarity, symmetric, l2_reg):
    """Sohn's l_i = log(1 + sum_{j != i} exp(s(a_i, p_j) - s(a_i, p_i))), mean over i."""
    b = z_a.shape[0]

    def s(u, v):
        if similarity == "dot":
            return sum(x * y for x, y in zip(u, v, strict=True))
        return -_sqdist(u, v)

    def one_way(anchors, positives):
        total = 0.0
        for i in range(b):
            own = s(anchors[i], positives[i])
            total += math.log(1.0 + sum(math.exp(s(anchors[i], positives[j]) - own) for j in range(b) if j != i))
        return total / b

    a, p = z_a.tolist(), z_b.tolist()
    loss = one_way(a, p)
    if symmetric:
        loss = (loss + one_way(p, a)) / 2
    norms = [sum(x * x for x in r) for r in a + p]
    return loss + l2_reg * sum(norms) / len(norms)


@pytest.mark.parametrize("similarity", ["dot", "neg_sq_distance"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("b", "d"), [(2, 3), (7, 5), (16, 8)])
def test_npair_matches_loop(similarity, symmetric, b, d):
    g = torch.Generator().manual_seed(b * 7 + d)
    z_a, z_b = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    config = NPairConfig(similarity=similarity, symmetric=symmetric, l2_reg=0.01)
    loss = NPairLoss(config, None)(_inputs(z_a, z_b))
    assert loss.item() == pytest.approx(npair_reference(z_a, z_b, similarity, symmetric, 0.01), rel=1e-6)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="mining: unknown 'easy'"):
        TripletConfig(mining="easy")
    with pytest.raises(ValueError, match="similarity"):
        NPairConfig(similarity="cosine")
    b = 3
    views = Views(images=(torch.zeros(b, 1, 4, 4),) * 3, index=torch.arange(b))
    z = torch.randn(3 * b, 4)
    three = LossInputs(views=views, episode=Episode.from_views(views), embeddings=Embeddings(h=z, z=z, n_views=views.n_views))
    with pytest.raises(ShapeError, match="triplet needs exactly 2 views"):
        TripletLoss(TripletConfig(), None)(three)
