"""NT-Xent against SimCLR's equation (1) written literally, anchor by anchor."""

import math

import pytest
import torch

from metacontrast.records import Embeddings, Episode, LossInputs, ShapeError, Views
from metacontrast_simclr.nt_xent import NTXentConfig, NTXentLoss, nt_xent


def _sim(u, v):
    return float(u @ v) / (float(u.norm()) * float(v.norm()))


def nt_xent_reference(z_a, z_b, tau):
    """l(i,j) = -log exp(sim(z_i,z_j)/tau) / sum_{k != i} exp(sim(z_i,z_k)/tau), averaged over
    all 2N anchors: both (i, j) and (j, i)."""
    n = z_a.shape[0]
    z = [z_a[i] for i in range(n)] + [z_b[i] for i in range(n)]
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        numerator = math.exp(_sim(z[i], z[j]) / tau)
        denominator = sum(math.exp(_sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (7, 16, 0.1), (16, 8, 1.0)])
def test_nt_xent_matches_equation(n, d, tau):
    g = torch.Generator().manual_seed(n * 100 + d)
    z_a, z_b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g,
                                                                                 dtype=torch.float64)
    ours = nt_xent(z_a, z_b, tau).item()
    assert ours == pytest.approx(nt_xent_reference(z_a, z_b, tau), rel=1e-5)


def test_gradient_matches_reference_autograd():
    g = torch.Generator().manual_seed(3)
    z_a = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    nt_xent(z_a, z_b, 0.3).backward()
    ours = torch.cat([z_a.grad, z_b.grad])
    eps = 1e-6
    numeric = torch.zeros(10, 4, dtype=torch.float64)
    with torch.no_grad():
        base = [z_a.detach().clone(), z_b.detach().clone()]
        for r in range(10):
            for c in range(4):
                plus = [t.clone() for t in base]
                minus = [t.clone() for t in base]
                plus[r // 5][r % 5, c] += eps
                minus[r // 5][r % 5, c] -= eps
                numeric[r, c] = (nt_xent_reference(*plus, 0.3) - nt_xent_reference(*minus, 0.3)) / (2 * eps)
    torch.testing.assert_close(ours, numeric, rtol=1e-4, atol=1e-6)


def test_loss_component_reads_views_from_episode():
    g = torch.Generator().manual_seed(4)
    b = 6
    z = torch.randn(2 * b, 8, generator=g)
    views = Views(images=(torch.zeros(b, 1, 4, 4),) * 2, index=torch.arange(b))
    inputs = LossInputs(views=views, episode=Episode.from_views(views), embeddings=Embeddings(h=z, z=z, n_views=2))
    loss = NTXentLoss(NTXentConfig(temperature=0.2), None)(inputs)
    assert loss.item() == pytest.approx(nt_xent_reference(z[:b].double(), z[b:].double(), 0.2), rel=1e-4)
    three = Views(images=(torch.zeros(b, 1, 4, 4),) * 3, index=torch.arange(b))
    z3 = torch.randn(3 * b, 8, generator=g)
    with pytest.raises(ShapeError, match="2 views"):
        NTXentLoss(NTXentConfig(), None)(LossInputs(views=three, episode=Episode.from_views(three),
                                                    embeddings=Embeddings(h=z3, z=z3)))


def test_config_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        NTXentConfig(temperature=0.0)
