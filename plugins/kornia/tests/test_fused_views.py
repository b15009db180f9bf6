"""The fused view paths (every view in one canvas, few kernels) against the per-view
pipeline they replace on an accelerator, which is itself checked against per-image
references in test_simclr_views.py and test_strong_views.py."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from metacontrast.interfaces import BuildContext
from metacontrast.records import Batch
from metacontrast_kornia import fused, ops, params
from metacontrast_kornia import strong_fused as SF
from metacontrast_kornia import strong_ops as S
from metacontrast_kornia.canvas import Canvas
from metacontrast_kornia.simclr_views import SimCLRViews, SimCLRViewsConfig


def _images(b: int, c: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("sizes", [(12, 12, 12), (12, 8, 5)])
def test_fused_simclr_views_equal_the_per_view_pipeline(channels, sizes):
    cfg = SimCLRViewsConfig(n_views=3, size=12, crop_scale=[0.2, 1.0], jitter_p=0.9, grayscale_p=0.5,
                            blur_p=0.5, solarize_p=0.5, strength=1.0)
    gen = SimCLRViews(cfg, BuildContext(in_channels=channels, image_size=16, mean=(0.5,) * channels,
                                        std=(0.2,) * channels))
    images = _images(48, channels, 16, seed=channels)
    p = gen.draw(48, 16, 16, torch.Generator().manual_seed(5))
    canvas = gen.render(images, p, sizes)
    with ops.selection("subset"):
        for v, size in enumerate(sizes):
            expected = gen.apply(images, p, v, size=size)
            torch.testing.assert_close(canvas.view(v), expected, rtol=0, atol=2e-5,
                                       msg=lambda m, v=v: f"view {v}: {m}")
            padding = canvas.x[v].clone()
            padding[:, :, :size, :size] = 0
            assert not padding.any(), f"view {v}: the padding must stay 0"


def test_forward_on_an_accelerator_equals_forward_on_the_cpu():
    gen = SimCLRViews(SimCLRViewsConfig(blur_p=0.5), BuildContext(in_channels=3, image_size=16,
                                                                  mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))
    batch = Batch(images=_images(8, 3, 16, seed=0), index=torch.arange(8))
    with ops.selection("mask"):
        fast = gen(batch, torch.Generator().manual_seed(3))
    with ops.selection("subset"):
        plain = gen(batch, torch.Generator().manual_seed(3))
    for a, b in zip(fast.images, plain.images, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_hue_rotation_in_closed_form_is_torchvisions_hsv_rotation():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 6, 6, generator=g)
    x[0] = 0.5  # grey: no hue
    x[1, 0] = x[1, 1]  # ties between the maximal channels
    x[2, :, :3] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure colours at the sector edges
    shift = torch.rand(64, generator=g) - 0.5
    got = fused.hue_rotate(x.flatten(2), (6 * shift).view(-1, 1, 1)).view_as(x)
    for b in range(64):
        torch.testing.assert_close(got[b], TF.adjust_hue(x[b], float(shift[b])), rtol=0, atol=1e-5,
                                   msg=lambda m, b=b: f"image {b}: {m}")


def test_jitter_plan_keeps_each_images_order_around_its_hue_rotation():
    """The 6 affine stages hold, in order, the operations before the hue rotation, then
    those after it; images without jitter get identity stages."""
    factors = torch.tensor([[[1.5, 0.5, 0.25, 0.1]] * 3])  # (1, 3, 4)
    order = torch.tensor([[[0, 3, 1, 2], [3, 2, 1, 0], [1, 2, 0, 3]]])
    on = torch.tensor([[True, True, False]])
    plan = fused.jitter_plan(factors, order, on)
    # image 0: brightness | hue | contrast, saturation
    assert plan.a[0, 0].tolist() == [1.5, 1, 1, 0.5, 0.25, 1]
    assert plan.c_mean[0, 0].tolist() == [0, 0, 0, 0.5, 0, 0]
    assert plan.c_grey[0, 0].tolist() == [0, 0, 0, 0, 0.75, 0]
    # image 1: hue first, then saturation, contrast, brightness
    assert plan.a[0, 1].tolist() == [1, 1, 1, 0.25, 0.5, 1.5]
    # image 2: not jittered
    assert plan.a[0, 2].tolist() == [1] * 6 and not plan.on[0, 2]


def _strong_case(sizes, b=24, rounds=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    v, side = len(sizes), max(sizes)
    x = torch.zeros(v, b, 3, side, side)
    for i, s in enumerate(sizes):
        x[i, :, :, :s, :s] = torch.randint(0, 256, (b, 3, s, s), generator=g).float() / 255
    op = torch.randint(14, (v, b, rounds), generator=g)
    op[:, :14, 0] = torch.arange(14)  # every operation at least once per view
    apply = torch.rand(v, b, rounds, generator=g) < 0.7
    apply[:, :14, 0] = True
    m = S.magnitudes(op, torch.rand(v, b, rounds, generator=g))
    return Canvas(x, tuple(sizes)), op, apply, m


@pytest.mark.parametrize("sizes", [(16,), (16, 12, 7), (17, 11)])
def test_each_fused_strong_round_applies_each_images_own_operation(sizes):
    """Round by round on the same input: the fused round against ``apply_op`` image by
    image (across rounds, a level rounding at a boundary may flip by one level between two
    float orders of the same warp, so each round starts from the fused result)."""
    canvas, op, apply, m = _strong_case(sizes)
    plan = SF.round_plan(op, apply, m, canvas.sizes, canvas.side, fill=0.5)
    for r in range(op.shape[2]):
        out = SF.strong_rounds(canvas, SF.select_round(plan, r))
        for v, size in enumerate(sizes):
            for b in range(op.shape[1]):
                x = canvas.view(v)[b:b + 1]
                expected = S.apply_op(S.OPS[int(op[v, b, r])], x, m[v, b, r:r + 1]) if apply[v, b, r] else x
                torch.testing.assert_close(out.view(v)[b:b + 1], expected, rtol=0, atol=1e-5,
                                           msg=lambda msg, v=v, b=b, r=r: f"round {r} view {v} image {b} "
                                           f"({S.OPS[int(op[v, b, r])]}): {msg}")
            padding = out.x[v].clone()
            padding[:, :, :size, :size] = 0
            assert not padding.any(), f"round {r} view {v}: the padding must stay 0"
        canvas = out


def test_rounds_without_any_operation_leave_the_images_exactly():
    canvas, op, apply, m = _strong_case((16, 9))
    plan = SF.round_plan(op, torch.zeros_like(apply), m, canvas.sizes, canvas.side, fill=0.5)
    assert torch.equal(SF.strong_rounds(canvas, plan).x, canvas.x)


def test_inverse_affine_table_inverts_each_geometric_operation():
    """The table's maps, composed with the forward maps of ``strong_ops``, give the identity."""
    sizes, side = (17, 9), 17
    table = SF._inverse_affine_table(sizes, side, torch.device("cpu"))
    k = 2 / (side - 1)
    for code, name in enumerate(S.GEOMETRIC):
        for v, size in enumerate(sizes):
            m = 0.23 if name != "rotate" else 21.0
            t = math.radians(m)
            features = torch.tensor([1.0, m, math.cos(t), math.sin(t)])
            normalised = (table[code + 1, v] @ features).view(2, 3)
            inverse = torch.cat([normalised / k, torch.tensor([[0.0, 0.0, 1.0]])])
            inverse[:2, 2] += 1 / k  # back from the canvas' normalised coordinates to pixels
            forward = S.affine_matrices(torch.tensor([code]), torch.tensor([m]), size, size)[0]
            forward = torch.cat([forward, torch.tensor([[0.0, 0.0, 1.0]])])
            torch.testing.assert_close(inverse @ forward, torch.eye(3), atol=1e-5, rtol=0)


def test_one_draw_gives_every_parameter():
    spec = params.ViewSpec(crop_scale=((0.2, 1.0),) * 2, crop_ratio=((0.75, 4 / 3),) * 2,
                           probabilities=((0.5, 0.8, 0.2, 0.0, 1.0),) * 2, strength=(0.5, 1.0),
                           blur_sigma=((0.1, 2.0),) * 2)
    u = torch.rand(2, 3000, params.COLUMNS, generator=torch.Generator().manual_seed(0))
    p = params.derive(u, spec, 32, 24)
    assert p["flip"].float().mean() == pytest.approx(0.5, abs=0.03)
    assert not p["blur"].any() and p["solarize"].all()
    f = p["jitter_factors"]
    assert f[0, :, :3].min() >= 0.6 - 1e-6 and f[0, :, :3].max() <= 1.4 + 1e-6  # strength 0.5
    assert f[1, :, :3].min() >= 0.2 - 1e-6 and f[1, :, :3].max() <= 1.8 + 1e-6  # strength 1
    assert f[1, :, 3].abs().max() <= 0.2 + 1e-6 and f[1, :, 3].abs().max() > 0.19
    assert p["blur_sigma"].min() >= 0.1 and p["blur_sigma"].max() <= 2.0
    assert torch.equal(p["jitter_order"].sort(-1).values, torch.arange(4).expand(2, 3000, 4))
    x0, y0, w, h = p["crop"].unbind(-1)
    assert (x0 + w <= 24).all() and (y0 + h <= 32).all() and (w >= 1).all() and (h >= 1).all()
