"""CLSA's strong operations on uint8 images against torchvision's functional ops, the
round structure against a per-image loop, and the weak/strong view generator."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from metacontrast.builder import component_config
from metacontrast.interfaces import BuildContext
from metacontrast.records import Batch
from metacontrast_kornia import strong_ops as S
from metacontrast_kornia.strong_views import WeakStrongViews

BILINEAR = TF.InterpolationMode.BILINEAR


def _u8(b=5, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, size, size), dtype=torch.uint8, generator=g)


def _levels(x):
    return (x * 255).round().long()


def _run(name, u8, m):
    return _levels(S.apply_op(name, u8.float() / 255, torch.full((u8.shape[0],), float(m))))


def test_invert_maps_x_to_255_minus_x():
    u8 = _u8()
    assert torch.equal(_run("invert", u8, 0), 255 - u8.long())


@pytest.mark.parametrize("threshold", [0, 100, 200, 256])
def test_solarize_inverts_exactly_the_pixels_at_or_above_the_threshold(threshold):
    u8 = _u8()
    expected = torch.where(u8.long() >= threshold, 255 - u8.long(), u8.long())
    assert torch.equal(_run("solarize", u8, threshold), expected)
    if threshold < 256:
        assert torch.equal(_run("solarize", u8, threshold), TF.solarize(u8, threshold).long())


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_posterize_keeps_the_top_bits(bits):
    u8 = _u8()
    out = _run("posterize", u8, bits)
    assert torch.equal(out, u8.long() >> (8 - bits) << (8 - bits))
    assert torch.equal(out, TF.posterize(u8, bits).long())


def test_equalize_is_pils_rule_and_flattens_the_histogram():
    u8 = _u8(size=64, seed=1)  # PIL's step needs more than 255 pixels per channel
    u8[0] = u8[0] // 4  # a dark image: equalisation must spread it
    out = _run("equalize", u8, 0)
    assert torch.equal(out, torch.stack([TF.equalize(i) for i in u8]).long())
    assert out[0].max() > 4 * u8[0].long().max() * 0.9
    flat = torch.full((1, 3, 8, 8), 77, dtype=torch.uint8)  # a single level stays as it is
    assert torch.equal(_run("equalize", flat, 0), flat.long())


def test_auto_contrast_stretches_each_channel_to_the_full_range():
    u8 = (_u8().float() * 0.5 + 40).to(torch.uint8)  # levels 40..167
    out = _run("auto_contrast", u8, 0)
    assert torch.equal(out.amin(dim=(2, 3)), torch.zeros(5, 3, dtype=torch.long))
    assert torch.equal(out.amax(dim=(2, 3)), torch.full((5, 3), 255))
    assert (out - torch.stack([TF.autocontrast(i) for i in u8]).long()).abs().max() <= 1


@pytest.mark.parametrize(("name", "reference", "tolerance"), [
    ("brightness", TF.adjust_brightness, 1),
    ("contrast", TF.adjust_contrast, 1),
    ("color", TF.adjust_saturation, 2),  # torchvision rounds the grey image to uint8 first
    ("sharpness", TF.adjust_sharpness, 1),
])
@pytest.mark.parametrize("factor", [0.05, 0.5, 0.95])
def test_enhancements_blend_like_torchvision(name, reference, tolerance, factor):
    u8 = _u8()
    expected = torch.stack([reference(i, factor) for i in u8]).long()
    assert (_run(name, u8, factor) - expected).abs().max() <= tolerance
    if name == "brightness":  # blending with black: every level scales down
        assert (_run(name, u8, factor) <= u8.long()).all()


@pytest.mark.parametrize(("name", "m", "tv"), [
    ("translate_x", 4 / 17, {"translate": [4, 0]}),  # a fraction of the 17-pixel side
    ("translate_y", -2 / 17, {"translate": [0, -2]}),
    ("rotate", 20.0, {"angle": 20.0}),
    ("rotate", -30.0, {"angle": -30.0}),
    ("shear_x", 0.3, {"shear": [-math.degrees(math.atan(0.3)), 0.0]}),
    ("shear_y", -0.2, {"shear": [0.0, math.degrees(math.atan(0.2))]}),
])
def test_geometric_operations_match_torchvision_affine(name, m, tv):
    x = _u8(size=17).float() / 255  # odd side: the centre is a pixel
    kwargs = {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "shear": [0.0, 0.0], **tv}
    expected = torch.stack([TF.affine(i, interpolation=BILINEAR, fill=0.5, **kwargs) for i in x])
    got = S.apply_op(name, x, torch.full((5,), m))
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))  # away from the filled border
    assert torch.allclose(got[inner], expected[inner], atol=1e-4)
    if name.startswith("translate"):
        assert torch.allclose(got, expected, atol=1e-4)  # the grey fill too


def test_magnitudes_cover_table_1():
    g = torch.Generator().manual_seed(0)
    op = torch.arange(14).repeat(2000)
    m = S.magnitudes(op, torch.rand(op.shape, generator=g))
    for code, name in enumerate(S.OPS):
        low, high = S.RANGES[name]
        values = m[op == code]
        assert low <= values.min() and values.max() <= high, name
        if name == "posterize":
            assert set(values.tolist()) == {4.0, 5.0, 6.0, 7.0, 8.0}
        elif high > low + 1:  # wide ranges: both ends reached
            assert values.min() < low + 0.05 * (high - low) and values.max() > high - 0.05 * (high - low)


def test_strong_augment_equals_a_per_image_loop_over_rounds(row_selection):
    g = torch.Generator().manual_seed(3)
    x = _u8(b=12).float() / 255
    op = torch.randint(14, (12, 5), generator=g)
    apply = torch.rand(12, 5, generator=g) < 0.5
    m = S.magnitudes(op, torch.rand(12, 5, generator=g))
    got = S.strong_augment(x, op, apply, m)
    for b in range(12):
        ref = x[b:b + 1]
        for r in range(5):
            if apply[b, r]:
                ref = S.apply_op(S.OPS[int(op[b, r])], ref, m[b, r:r + 1])
        assert torch.allclose(got[b:b + 1], ref, atol=1e-5), b
    assert torch.equal(S.strong_augment(x, op, torch.zeros_like(apply), m), x)


def _generator(**settings):
    ctx = BuildContext(in_channels=3, image_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    return WeakStrongViews(component_config(WeakStrongViews, "views", settings), ctx)


def test_weak_strong_views_replay_from_their_parameters(row_selection):
    gen = _generator(strong_sizes=[16, 12, 8], weak={"blur_p": 0.5})
    batch = Batch(images=_u8(b=6), index=torch.arange(6))
    views = gen(batch, torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in views.images] == [16, 16, 16, 12, 8]
    p = views.params
    assert not p["strong_apply"][:2].any() and p["strong_apply"][2:].any()
    mean, std = torch.tensor(gen.mean).view(1, 3, 1, 1), torch.tensor(gen.std).view(1, 3, 1, 1)
    for v in range(5):
        expected = gen.weak.apply(batch.images, p, v) if v < 2 else gen.strong.apply(
            batch.images, p, v, size=[16, 12, 8][v - 2])
        for b in range(6):
            one = expected[b:b + 1]
            for r in range(5):
                if v >= 2 and p["strong_apply"][v, b, r]:
                    one = S.apply_op(S.OPS[int(p["strong_op"][v, b, r])], one, p["strong_magnitude"][v, b, r:r + 1])
            assert torch.allclose(views.images[v][b:b + 1], (one - mean) / std, atol=1e-4), (v, b)


def test_strong_draws_choose_ops_uniformly_and_apply_half_of_them():
    gen = _generator(strong_sizes=[8])
    p = gen.draw(4000, 16, 16, torch.Generator().manual_seed(1))
    op, apply = p["strong_op"][2], p["strong_apply"][2]
    assert abs(apply.float().mean().item() - 0.5) < 0.02
    counts = torch.bincount(op.flatten(), minlength=14).float() / op.numel()
    assert (counts - 1 / 14).abs().max() < 0.01


def test_strong_views_without_colour_keep_crop_flip_and_ops_only():
    gen = _generator(strong_sizes=[16], strong_colour=False)
    p = gen.draw(200, 16, 16, torch.Generator().manual_seed(2))
    assert not p["jitter"][2].any() and not p["grayscale"][2].any() and not p["blur"][2].any()
    assert p["jitter"][:2].any()  # the weak views keep theirs


def test_bad_strong_settings_name_the_key():
    from metacontrast.config import ConfigError

    with pytest.raises(ConfigError, match="strong_sizes"):
        _generator(strong_sizes=[])
    with pytest.raises(ConfigError, match="op_p"):
        _generator(op_p=1.5)
