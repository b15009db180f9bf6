"""``oucl`` and ``metaug`` losses against references that list every anchor's positives
and negatives with loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metacontrast.interfaces import BuildContext
from metacontrast.records import Embeddings, Episode, LossInputs, ShapeError, Views
from metacontrast_metaug.losses import MetAugLoss, MetAugLossConfig, OUCLLoss, OUCLLossConfig


def _context(parts: int, dim: int) -> BuildContext:
    return BuildContext(in_channels=3, image_size=8, mean=(0.5,) * 3, std=(0.25,) * 3,
                        head_dim=parts * dim, head_parts=parts)


def _inputs(z: torch.Tensor, n_views: int, memory: torch.Tensor | None = None) -> LossInputs:
    b = z.shape[0] // n_views
    views = Views(images=tuple(torch.zeros(b, 3, 4, 4) for _ in range(n_views)), index=torch.arange(b))
    return LossInputs(views=views, episode=Episode.from_views(views), embeddings=Embeddings(h=z, z=z), memory=memory)


def eq10(pos, neg, beta, gamma):
    total = sum(math.exp(beta * ((dp - 1) ** 2 + dn ** 2 - 2 * gamma ** 2)) for dn in neg for dp in pos)
    return math.log(1 + total) / beta


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def reference_oucl(z, n_views, parts, beta, gamma, memory=None, aug=None):
    """Every feature (row r, part j) is an anchor; candidates are features of another part
    (one part: another row). Same image: positive, else negative; memory: negatives.
    ``aug``: the candidates are the augmented features instead (no memory)."""
    rows, b = z.shape[0], z.shape[0] // n_views
    feats = z.reshape(rows, parts, -1)
    cands = feats if aug is None else aug
    losses = []
    for r in range(rows):
        for j in range(parts):
            a = _unit(feats[r, j])
            pos, neg = [], []
            for r2 in range(rows):
                for j2 in range(parts):
                    if parts > 1 and j2 == j:
                        continue
                    if parts == 1 and aug is None and r2 == r:
                        continue
                    d = float(a @ _unit(cands[r2, j2]))
                    (pos if r2 % b == r % b else neg).append(d)
            if memory is not None and aug is None:
                mem = memory.reshape(memory.shape[0], parts, -1)
                for k in range(mem.shape[0]):
                    for j2 in range(parts):
                        if parts > 1 and j2 == j:
                            continue
                        neg.append(float(a @ _unit(mem[k, j2])))
            losses.append(eq10(pos, neg, beta, gamma) if pos and neg else 0.0)
    return sum(losses) / len(losses)


@pytest.mark.parametrize(("parts", "n_views"), [(2, 1), (3, 1), (1, 2), (2, 2)])
def test_oucl_loss_matches_the_loop_reference(parts, n_views):
    g = torch.Generator().manual_seed(parts * 10 + n_views)
    z = torch.randn(5 * n_views, parts * 4, generator=g, dtype=torch.float64)
    memory = torch.randn(6, parts * 4, generator=g, dtype=torch.float64)
    loss = OUCLLoss(OUCLLossConfig(beta=3.0, gamma=0.4), _context(parts, 4))
    got = loss(_inputs(z, n_views, memory)).item()
    assert got == pytest.approx(reference_oucl(z, n_views, parts, 3.0, 0.4, memory), rel=1e-9)
    without = OUCLLoss(OUCLLossConfig(beta=3.0, memory_negatives=False), _context(parts, 4))
    assert without(_inputs(z, n_views, memory)).item() == pytest.approx(
        reference_oucl(z, n_views, parts, 3.0, 0.4), rel=1e-9)


def test_metaug_loss_is_l_ori_plus_delta_l_aug():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2 * 4, generator=g, dtype=torch.float64)
    memory = torch.randn(5, 8, generator=g, dtype=torch.float64)
    loss = MetAugLoss(MetAugLossConfig(beta=2.0, delta=0.3), _context(2, 4)).double()
    aug = torch.stack([loss.mags[j](F.normalize(z.reshape(6, 2, 4)[:, j], dim=1)) for j in range(2)], dim=1)
    ori = reference_oucl(z, 1, 2, 2.0, 0.4, memory)
    l_aug = reference_oucl(z, 1, 2, 2.0, 0.4, aug=aug.detach())
    got = loss(_inputs(z, 1, memory)).item()
    assert got == pytest.approx(ori + 0.3 * l_aug, rel=1e-9)
    parts = F.normalize(z.reshape(6, 2, 4), dim=2)
    assert loss.augment(parts).norm(dim=2).sub(1).abs().max() < 1e-12


def test_regularization_uses_original_margins_and_original_augmented_pairs():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 2 * 3, generator=g, dtype=torch.float64)
    loss = MetAugLoss(MetAugLossConfig(margin="large"), _context(2, 3)).double()
    parts = F.normalize(z.reshape(5, 2, 3), dim=2)
    aug = loss.augment(parts).detach()
    opos, oneg, apos, aneg = [], [], [], []
    for r in range(5):
        for j in range(2):
            for r2 in range(5):
                j2 = 1 - j
                (opos if r == r2 else oneg).append(float(parts[r, j] @ parts[r2, j2]))
                (apos if r == r2 else aneg).append(float(parts[r, j] @ aug[r2, j2]))
    lo, hi = min(min(opos), max(oneg)), max(min(opos), max(oneg))
    literal = (sum(max(d - lo, 0) for d in apos) / len(apos) + sum(max(hi - d, 0) for d in aneg) / len(aneg))
    views = Views(images=(torch.zeros(5, 3, 4, 4),), index=torch.arange(5))
    got = loss.regularization(Embeddings(h=z, z=z), Episode.from_views(views)).item()
    assert got == pytest.approx(literal, rel=1e-9)


def test_one_view_and_one_part_is_refused_naming_the_fix():
    loss = OUCLLoss(OUCLLossConfig(), _context(1, 4))
    with pytest.raises(ShapeError, match="no positive pair"):
        loss(_inputs(torch.randn(4, 4), 1))


def test_metaug_config_errors_name_the_key():
    with pytest.raises(ValueError, match="margin: unknown margin 'tiny'"):
        MetAugLossConfig(margin="tiny")
    with pytest.raises(ValueError, match="similarity: unknown"):
        OUCLLossConfig(similarity="dot")
