"""Solvers against independent references: loops over classes, lstsq on the primal
problem, the KKT conditions of the SVM dual, NT-Xent for the all-pairs solver."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metacontrast.interfaces import BuildContext
from metacontrast.records import Embeddings, Episode, Mixing, Views
from metacontrast_metassl.losses import QueryCELoss, soft_cross_entropy
from metacontrast_metassl.solvers import (
    AllPairsConfig,
    AllPairsSolver,
    ProtoNetConfig,
    ProtoNetSolver,
    RidgeConfig,
    RidgeSolver,
    protonet_scores,
    ridge_weights,
)
from metacontrast_metassl.svm import SVMConfig, SVMSolver, project_simplex, svm_dual, svm_dual_gradient
from metacontrast_simclr.nt_xent import nt_xent

CTX = BuildContext(in_channels=3, image_size=8, mean=(0.5,) * 3, std=(0.2,) * 3, head_dim=5)


def _episode(v: int, b: int, m1: int, tasks: int = 1) -> Episode:
    views = Views(images=tuple(torch.zeros(b, 1, 2, 2) for _ in range(v)), index=torch.arange(b))
    return Episode.from_views(views, m1, tasks)


def _z(v: int, b: int, d: int = 5, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(v * b, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_protonet_logits_equal_a_loop_over_classes(distance):
    v, b, m1, tasks = 3, 6, 2, 2
    z, ep = _z(v, b), _episode(v, b, m1, tasks)
    cfg = ProtoNetConfig(distance=distance, temperature=0.7, normalize=False)
    logits = ProtoNetSolver(cfg, CTX)(Embeddings(h=z, z=z), ep)
    ways = b // tasks
    assert logits.scores.shape == ((v - m1) * b, ways)
    for row, q_index in enumerate(ep.query.tolist()):
        image = q_index % b
        task = image // ways
        assert int(logits.targets[row]) == image % ways
        for c in range(ways):
            proto = torch.stack([z[s * b + task * ways + c] for s in range(m1)]).mean(0)
            q = z[q_index]
            want = -((q - proto) ** 2).sum() if distance == "euclidean" else F.cosine_similarity(q, proto, dim=0)
            torch.testing.assert_close(logits.scores[row, c], want / 0.7, rtol=1e-5, atol=1e-5)


def _lstsq_reference(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """The primal ridge problem as least squares on [X; sqrt(lam) I] W = [Y; 0]."""
    out = []
    for xi, yi in zip(x, y, strict=True):
        d = xi.shape[1]
        a = torch.cat([xi, lam ** 0.5 * torch.eye(d, dtype=xi.dtype)])
        rhs = torch.cat([yi, torch.zeros(d, yi.shape[1], dtype=yi.dtype)])
        out.append(torch.linalg.lstsq(a, rhs).solution)
    return torch.stack(out)


@pytest.mark.parametrize(("s", "d"), [(12, 5), (4, 9)])
def test_ridge_primal_and_woodbury_equal_lstsq(s, d):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, s, d, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 3, (2, s), generator=g), 3).double()
    want = _lstsq_reference(x, y, 0.7)
    for space in ("primal", "dual", "auto"):
        torch.testing.assert_close(ridge_weights(x, y, 0.7, space), want, rtol=1e-9, atol=1e-10)


def test_ridge_solver_scores_are_scaled_query_projections():
    v, b, m1 = 2, 6, 1
    z, ep = _z(v, b), _episode(v, b, m1)
    solver = RidgeSolver(RidgeConfig(lam=2.0, scale_init=3.0), CTX)
    with torch.no_grad():
        solver.bias.fill_(0.25)
    logits = solver(Embeddings(h=z, z=z), ep)
    support, query = z[:b], z[b:]
    w = torch.linalg.solve(support.T @ support + 2.0 * torch.eye(5), support.T @ torch.eye(b))
    torch.testing.assert_close(logits.scores, 3.0 * query @ w + 0.25, rtol=1e-4, atol=1e-4)


def test_gradients_reach_the_embeddings_through_each_closed_form():
    g = torch.Generator().manual_seed(2)
    y = F.one_hot(torch.arange(4) % 2, 2).double()[None]
    for space, d in (("primal", 3), ("dual", 6)):
        x = torch.randn(1, 4, d, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, sp=space: ridge_weights(a, y, 0.5, sp), (x,))
    q = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(2, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    task = torch.tensor([0, 1, 1])
    for distance in ("euclidean", "cosine"):
        assert torch.autograd.gradcheck(lambda a, b_, dist=distance: protonet_scores(a, b_, task, dist), (q, p))
    x = torch.randn(1, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: svm_dual(a, y, 0.5, 20), (x,), atol=1e-5)


def test_simplex_projection_is_the_closest_point_of_the_simplex():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(50, 4, generator=g, dtype=torch.float64) * 2
    p = project_simplex(v, 1.5)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.full((50,), 1.5, dtype=torch.float64))
    # no other point of the simplex is closer: compare with random feasible points
    others = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((50, 200)) * 1.5
    assert ((others - v[:, None]).norm(dim=-1) >= (p - v).norm(dim=-1)[:, None] - 1e-12).all()


def test_svm_solution_satisfies_the_kkt_conditions():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 3, (2, 9), generator=g), 3).double()
    c = 0.8
    alpha = svm_dual(x, y, c, iterations=4000)
    b = c * y - alpha
    # feasibility: alpha_s <= C e_y, rows sum to zero (b on the simplex of radius C)
    assert (b >= -1e-12).all() and torch.allclose(alpha.sum(-1), torch.zeros(2, 9, dtype=torch.float64), atol=1e-10)
    # stationarity + complementary slackness on each row's simplex: coordinates with b > 0
    # carry the row's largest gradient, the others at most that
    grad = svm_dual_gradient(x @ x.transpose(1, 2), y, b, c)
    top = grad.max(dim=-1, keepdim=True).values
    active = b > 1e-8
    assert (grad[active] - top.expand_as(grad)[active]).abs().max() < 1e-6
    assert (grad - top).max() < 1e-9
    # the dual optimum equals the primal optimum (zero duality gap)
    w = x.transpose(1, 2) @ alpha  # (n, D, N)
    scores = x @ w
    margin = scores - (scores * y).sum(-1, keepdim=True) + 1 - y
    primal = 0.5 * (w ** 2).sum((1, 2)) + c * margin.amax(-1).clamp_min(0).sum(-1)
    dual = -0.5 * (alpha * (x @ x.transpose(1, 2) @ alpha)).sum((1, 2)) + (alpha * y).sum((1, 2))
    torch.testing.assert_close(primal, dual, rtol=1e-6, atol=1e-6)


def test_svm_solver_runs_on_an_episode_and_backpropagates():
    v, b = 2, 6
    z = _z(v, b).requires_grad_()
    logits = SVMSolver(SVMConfig(c=0.5, iterations=10), CTX)(Embeddings(h=z, z=z), _episode(v, b, 1))
    assert logits.scores.shape == (b, b)
    F.cross_entropy(logits.scores, logits.targets).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0 and torch.isfinite(z.grad).all()


def test_all_pairs_solver_with_query_ce_is_nt_xent():
    b = 7
    z = _z(2, b, d=6)
    ep = _episode(2, b, 0)
    from metacontrast.records import LossInputs

    views = Views(images=(torch.zeros(b, 1, 2, 2),) * 2, index=torch.arange(b))
    logits = AllPairsSolver(AllPairsConfig(temperature=0.3), CTX)(Embeddings(h=z, z=z), ep)
    ours = QueryCELoss(None, CTX)(LossInputs(views=views, episode=ep, embeddings=Embeddings(h=z, z=z),
                                              logits=logits))
    torch.testing.assert_close(ours, nt_xent(z[:b], z[b:], 0.3, gather=False), rtol=1e-6, atol=1e-6)


def test_all_pairs_targets_with_a_mixed_view_share_mass_by_lambda():
    b, lam = 4, 0.3
    weight = torch.ones(2, b)
    weight[1] = lam
    partner = torch.arange(b).repeat(2, 1)
    partner[1] = torch.arange(b - 1, -1, -1)
    views = Views(images=(torch.zeros(b, 1, 2, 2),) * 2, index=torch.arange(b),
                  mix=Mixing(weight=weight, partner=partner))
    ep = Episode.from_views(views)
    z = _z(2, b)
    t = AllPairsSolver(AllPairsConfig(), CTX)(Embeddings(h=z, z=z), ep).targets
    assert t.shape == (2 * b, 2 * b)
    for i in range(b):  # unmixed anchor (0, i): mixed (1, i) holds lam of i, (1, rev i) holds 1 - lam
        want = torch.zeros(2 * b)
        want[b + i] += lam
        want[b + (b - 1 - i)] += 1 - lam
        torch.testing.assert_close(t[i], want)
        want = torch.zeros(2 * b)  # mixed anchor (1, i): lam of i, 1 - lam of rev i, in view 0
        want[i] += lam
        want[b - 1 - i] += 1 - lam
        torch.testing.assert_close(t[b + i], want)


def test_soft_cross_entropy_matches_the_formula_and_the_hard_case():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(5, 3, generator=g)
    hard = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(soft_cross_entropy(s, hard), soft_cross_entropy(s, F.one_hot(hard, 3).float()))
    t = torch.softmax(torch.randn(5, 3, generator=g), 1)
    want = sum(-(t[i] * torch.log(torch.exp(s[i]) / torch.exp(s[i]).sum())).sum() for i in range(5)) / 5
    torch.testing.assert_close(soft_cross_entropy(s, t), want)
