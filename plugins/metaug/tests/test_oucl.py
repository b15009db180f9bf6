"""OUCL (eq. 7-10), margins (eq. 4, A.2) and R_sigma (eq. 5) against the equations
written out literally with loops."""

from __future__ import annotations

import math

import pytest
import torch

from metacontrast_metaug.oucl import Margins, OUCLConfig, margin_regularization, margins, oucl_per_anchor


def eq8(pos: list[float], neg: list[float], beta: float, lam: float) -> float:
    total = sum(math.exp(beta * (dn - dp + lam)) for dn in neg for dp in pos)
    return math.log(1 + total) / beta


def eq9(pos, neg, beta, o_pos, o_neg, g_pos, g_neg, phi=1.0) -> float:
    total = 0.0
    for dn in neg:
        for dp in pos:
            gamma_n = max(dn - o_neg, 0.0) / phi
            gamma_p = max(o_pos - dp, 0.0) / phi
            total += math.exp(beta * (gamma_n * (dn - g_neg) - gamma_p * (dp - g_pos)))
    return math.log(1 + total) / beta


def eq10(pos, neg, beta, gamma) -> float:
    total = sum(math.exp(beta * ((dp - 1) ** 2 + dn ** 2 - 2 * gamma ** 2)) for dn in neg for dp in pos)
    return math.log(1 + total) / beta


def _rows(a: int, width: int, seed: int, low: float = -1.0, high: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    sims = torch.rand(a, width, generator=g, dtype=torch.float64) * (high - low) + low
    mask = torch.rand(a, width, generator=g) < 0.6
    mask[:, 0] = True
    return sims, mask


def _check(config: OUCLConfig, literal, low=-1.0, high=1.0):
    pos, pos_mask = _rows(5, 7, 0, low, high)
    neg, neg_mask = _rows(5, 11, 1, low, high)
    got = oucl_per_anchor(pos, neg, pos_mask, neg_mask, config)
    for a in range(5):
        p = pos[a][pos_mask[a]].tolist()
        n = neg[a][neg_mask[a]].tolist()
        assert got[a].item() == pytest.approx(literal(p, n), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(("beta", "lam"), [(1.0, 0.0), (4.0, 0.5), (16.0, 0.2)])
def test_margin_form_is_equation_8(beta, lam):
    _check(OUCLConfig(form="margin", beta=beta, lam=lam), lambda p, n: eq8(p, n, beta, lam))


@pytest.mark.parametrize("phi", [1.0, 6.0])
def test_weighted_form_is_equation_9_and_phi_attenuates_gamma(phi):
    c = OUCLConfig(form="weighted", beta=8.0, o_pos=1.3, o_neg=-0.2, gamma_pos=0.7, gamma_neg=0.25, phi=phi)
    _check(c, lambda p, n: eq9(p, n, 8.0, 1.3, -0.2, 0.7, 0.25, phi))


def test_weighted_form_cuts_gamma_at_zero():
    """Similarities beyond the optimums (d- < O-, d+ > O+) get weight 0, as [.]_+ says."""
    c = OUCLConfig(form="weighted", beta=4.0, o_pos=0.5, o_neg=0.0, gamma_pos=0.3, gamma_neg=0.1)
    _check(c, lambda p, n: eq9(p, n, 4.0, 0.5, 0.0, 0.3, 0.1))


@pytest.mark.parametrize("gamma", [0.1, 0.4])
def test_reduced_form_is_equation_10(gamma):
    _check(OUCLConfig(form="reduced", beta=5.0, gamma=gamma), lambda p, n: eq10(p, n, 5.0, gamma))


@pytest.mark.parametrize("gamma", [0.2, 0.4, 0.6])
def test_equation_10_is_equation_9_with_the_papers_substitution(gamma):
    """O+ = 1 + gamma, O- = -gamma, gamma+ = 1 - gamma, gamma- = gamma, similarities in [0, 1]."""
    pos, pos_mask = _rows(6, 9, 3, 0.0, 1.0)
    neg, neg_mask = _rows(6, 13, 4, 0.0, 1.0)
    reduced = oucl_per_anchor(pos, neg, pos_mask, neg_mask, OUCLConfig(form="reduced", beta=8.0, gamma=gamma))
    weighted = oucl_per_anchor(pos, neg, pos_mask, neg_mask, OUCLConfig(
        form="weighted", beta=8.0, o_pos=1 + gamma, o_neg=-gamma, gamma_pos=1 - gamma, gamma_neg=gamma))
    torch.testing.assert_close(reduced, weighted, rtol=1e-12, atol=1e-12)


def test_equation_8_approaches_equation_7_as_beta_grows():
    """One positive and one negative: eq. 8 -> [d- - d+ + lambda]_+ (eq. 7). With sets, the
    limit is the hardest pair, [max d- - min d+ + lambda]_+ (eq. 7's sums only for one pair)."""
    lam = 0.3
    for dp, dn in [(0.9, 0.1), (0.5, 0.4), (0.2, 0.6)]:
        eq7 = max(dn - dp + lam, 0.0)
        gaps = [abs(oucl_per_anchor(torch.tensor([[dp]]), torch.tensor([[dn]]), torch.ones(1, 1, dtype=torch.bool),
                                    torch.ones(1, 1, dtype=torch.bool),
                                    OUCLConfig(form="margin", beta=b, lam=lam)).item() - eq7)
                for b in (1.0, 10.0, 100.0, 1000.0)]
        assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 2e-3
    pos, pos_mask = _rows(4, 5, 7)
    neg, neg_mask = _rows(4, 6, 8)
    hardest = (neg.masked_fill(~neg_mask, -9).amax(1) - pos.masked_fill(~pos_mask, 9).amin(1) + lam).clamp_min(0)
    big = oucl_per_anchor(pos, neg, pos_mask, neg_mask, OUCLConfig(form="margin", beta=1e4, lam=lam))
    torch.testing.assert_close(big, hardest, atol=2e-3, rtol=0)


def test_large_beta_stays_finite_and_anchors_without_pairs_give_zero():
    pos = torch.tensor([[-1.0, 1.0], [0.5, 0.5]])
    neg = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [False, False]])
    out = oucl_per_anchor(pos, neg, mask, torch.ones(2, 2, dtype=torch.bool),
                          OUCLConfig(form="margin", beta=1e4, lam=1.0))
    assert torch.isfinite(out).all() and out[1].item() == 0.0
    assert out[0].item() == pytest.approx(3.0, abs=1e-3)  # max d- - min d+ + lambda = 1 + 1 + 1


def test_margins_follow_their_definitions():
    pos = torch.tensor([0.9, 0.35, 0.7])
    neg = torch.tensor([0.1, 0.5, -0.3])
    min_pos, max_neg = 0.35, 0.5
    large, medium, small = (margins(pos, neg, k) for k in ("large", "medium", "small"))
    assert (large.sigma_pos.item(), large.sigma_neg.item()) == pytest.approx((min(min_pos, max_neg), max(min_pos, max_neg)))
    assert medium.sigma_pos.item() == pytest.approx((min_pos + max_neg) / 2) == medium.sigma_neg.item()
    assert (small.sigma_pos.item(), small.sigma_neg.item()) == pytest.approx((max(min_pos, max_neg), min(min_pos, max_neg)))
    with pytest.raises(ValueError, match="margin: unknown"):
        margins(pos, neg, "huge")


def test_margin_regularization_is_equation_5():
    g = torch.Generator().manual_seed(5)
    aug_pos, aug_neg = torch.rand(9, generator=g) * 2 - 1, torch.rand(14, generator=g) * 2 - 1
    m = Margins(torch.tensor(0.1), torch.tensor(0.3))
    literal = (sum(max(d - 0.1, 0.0) for d in aug_pos.tolist()) / 9
               + sum(max(0.3 - d, 0.0) for d in aug_neg.tolist()) / 14)
    assert margin_regularization(aug_pos, aug_neg, m).item() == pytest.approx(literal, rel=1e-6)


@pytest.mark.parametrize("kind", ["large", "medium", "small"])
def test_masked_margins_and_regularization_equal_the_gathered_entries(kind):
    g = torch.Generator().manual_seed(11)
    original = (torch.rand(6, 8, generator=g) * 2 - 1).requires_grad_()
    augmented = (torch.rand(6, 8, generator=g) * 2 - 1).requires_grad_()
    pos = torch.rand(6, 8, generator=g) < 0.3
    neg = ~pos & (torch.rand(6, 8, generator=g) < 0.8)
    gathered = margin_regularization(augmented[pos], augmented[neg], margins(original[pos], original[neg], kind))
    masked = margin_regularization(augmented, augmented, margins(original, original, kind, pos, neg), pos, neg)
    torch.testing.assert_close(masked, gathered)
    grads_gathered = torch.autograd.grad(gathered, [original, augmented])
    grads_masked = torch.autograd.grad(masked, [original, augmented])
    for a, b in zip(grads_masked, grads_gathered, strict=True):
        torch.testing.assert_close(a, b)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="form: unknown OUCL form 'circle'"):
        OUCLConfig(form="circle")
    with pytest.raises(ValueError, match="beta: must be > 0"):
        OUCLConfig(beta=0)
