"""Rotations, Un-Mix, the BYOL and rotation losses and the EMA teacher, against loops and
the papers' formulas written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metacontrast.interfaces import BuildContext
from metacontrast.records import Embeddings, Episode, LossInputs, Mixing, Views
from metacontrast.teacher import EMATeacher
from metacontrast_metassl.losses import BYOLConfig, BYOLLoss, RotationLoss
from metacontrast_metassl.transforms import (
    NaiveRotation,
    RotationConfig,
    RotationCopies,
    TaskRotation,
    UnMix,
    UnMixConfig,
)

CTX = BuildContext(in_channels=3, image_size=6, mean=(0.5,) * 3, std=(0.2,) * 3, head_dim=4)


def _views(v: int = 2, b: int = 64, size: int = 6, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    return Views(images=tuple(torch.rand(b, 3, size, size, generator=g) for _ in range(v)), index=torch.arange(b))


def _rot_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """k counter-clockwise quarter turns of (C, H, W), written with transposes and flips."""
    for _ in range(k):
        x = x.transpose(-2, -1).flip(-2)
    return x


def test_task_rotation_turns_all_views_of_an_image_together():
    views = _views(v=3)
    out = TaskRotation(RotationConfig(), CTX)(views, torch.Generator().manual_seed(1))
    turns = out.params["task_rotation"]
    assert turns.shape == (3, 64) and (turns == turns[0]).all()  # one angle per image
    assert set(turns[0].tolist()) == {0, 1, 2, 3}
    for v in range(3):
        for b in range(64):
            assert torch.equal(out.images[v][b], _rot_reference(views.images[v][b], int(turns[v, b])))
    ep = Episode.from_views(out, 1)  # a rotated image is still its own class: (image, angle)
    assert ep.labels.tolist() == list(range(64)) * 3


def test_naive_rotation_turns_views_independently():
    out = NaiveRotation(RotationConfig(), CTX)(_views(), torch.Generator().manual_seed(1))
    turns = out.params["task_rotation"]
    assert (turns[0] != turns[1]).any()


def test_rotation_probabilities_are_respected():
    views = _views(v=1, b=4000, size=2)
    turns = TaskRotation(RotationConfig([0.7, 0.1, 0.1, 0.1]), CTX)(views, torch.Generator().manual_seed(2)).params[
        "task_rotation"][0]
    share = torch.bincount(turns, minlength=4).float() / 4000
    torch.testing.assert_close(share, torch.tensor([0.7, 0.1, 0.1, 0.1]), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="summing to 1"):
        RotationConfig([0.5, 0.5, 0.5, 0.0])


def test_rotation_copies_leave_the_views_and_add_rotated_copies():
    views = _views(b=16)
    out = RotationCopies(RotationConfig(), CTX)(views, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(out.images, views.images, strict=True))
    angles, copies = out.params["rotation_angle"], out.extra["rotation"]
    assert copies.shape == (32, 3, 6, 6)
    for v in range(2):
        for b in range(16):
            assert torch.equal(copies[v * 16 + b], _rot_reference(views.images[v][b], int(angles[v, b])))


def _unmix(cutmix_p: float, seed: int):
    views = _views(b=8, size=10)
    out = UnMix(UnMixConfig(cutmix_p=cutmix_p), CTX)(views, torch.Generator().manual_seed(seed))
    return views, out


def test_mixup_mixes_the_last_view_with_the_reversed_batch():
    views, out = _unmix(0.0, 4)
    lam = float(out.mix.weight[1, 0])
    assert 0 < lam < 1 and (out.mix.weight[0] == 1).all()
    assert out.mix.partner[1].tolist() == list(range(7, -1, -1))
    assert torch.equal(out.images[0], views.images[0])
    for b in range(8):
        torch.testing.assert_close(out.images[1][b], lam * views.images[1][b] + (1 - lam) * views.images[1][7 - b])


def test_cutmix_pastes_a_box_whose_area_is_the_partner_share():
    views, out = _unmix(1.0, 5)
    lam = float(out.mix.weight[1, 0])
    for b in range(8):
        from_partner = (out.images[1][b] == views.images[1][7 - b]).all(0) & (out.images[1][b] != views.images[1][b]).any(0)
        assert abs(from_partner.float().mean().item() - (1 - lam)) < 1e-6
        rows, cols = from_partner.nonzero(as_tuple=True)
        if rows.numel():  # a rectangle
            assert from_partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_mixing_needs_a_query_view_and_a_single_task():
    _, out = _unmix(0.0, 6)
    with pytest.raises(ValueError, match="mixed view"):
        Episode.from_views(out.evolve(mix=Mixing(weight=out.mix.weight.flip(0),
                                                       partner=out.mix.partner.flip(0))), 1)
    with pytest.raises(ValueError, match="tasks=1"):
        Episode.from_views(out, 1, tasks=2)


def test_byol_loss_is_the_symmetrised_regression_of_the_paper():
    torch.manual_seed(0)
    b = 6
    loss = BYOLLoss(BYOLConfig(predictor_hidden=8), CTX).eval()
    z, t = torch.randn(2 * b, 4), torch.randn(2 * b, 4)
    ep = Episode.from_views(_views(b=b))
    got = loss(LossInputs(views=_views(b=b), episode=ep, embeddings=Embeddings(h=z, z=z, teacher_z=t, teacher_views=(0, 1))))
    p = loss.predictor(z)
    want = sum(2 - 2 * F.cosine_similarity(p[i], t[b + i], dim=0) + 2 - 2 * F.cosine_similarity(p[b + i], t[i], dim=0)
               for i in range(b)) / b
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rotation_loss_is_cross_entropy_of_the_angle():
    torch.manual_seed(0)
    views = RotationCopies(RotationConfig(), CTX)(_views(b=5), torch.Generator().manual_seed(7))
    loss = RotationLoss(None, CTX)
    z = torch.randn(10, 4)
    zr = torch.randn(10, 4)
    got = loss(LossInputs(views=views, episode=Episode.from_views(views),
                          embeddings=Embeddings(h=z, z=z, extras={"rotation": zr})))
    logits = zr @ loss.classifier.weight.T + loss.classifier.bias
    angles = views.params["rotation_angle"].reshape(-1)
    want = -sum(torch.log_softmax(logits[i], 0)[angles[i]] for i in range(10)) / 10
    torch.testing.assert_close(got, want)


def test_ema_teacher_update_and_cosine_schedule():
    online = torch.nn.Linear(3, 2)
    head = torch.nn.Identity()
    teacher = EMATeacher(online, head, momentum=0.9, final_momentum=1.0, schedule="cosine")
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.momentum_at(0, 11) == pytest.approx(0.9) and teacher.momentum_at(10, 11) == pytest.approx(1.0)
    assert teacher.momentum_at(5, 11) == pytest.approx(0.95)
    before = teacher.encoder.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    teacher.update(online, head, 0, 11)
    torch.testing.assert_close(teacher.encoder.weight, 0.9 * before + 0.1 * online.weight)
    with pytest.raises(ValueError, match="schedule"):
        EMATeacher(online, head, 0.9, schedule="linear")
