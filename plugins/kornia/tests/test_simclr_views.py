"""SimCLR views: sampling ranges, replay, and every operation against a per-image
reference (a bilinear loop for the crop, torchvision's functional ops for the rest)."""

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from metacontrast.interfaces import BuildContext
from metacontrast.records import Batch
from metacontrast_kornia import ops
from metacontrast_kornia.params import crop_boxes
from metacontrast_kornia.simclr_views import SimCLRViews, SimCLRViewsConfig

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _context(c=3, size=16):
    return BuildContext(in_channels=c, image_size=size, mean=MEAN[:c], std=STD[:c])


def _batch(b=6, c=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(images=torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8),
                 index=torch.arange(b))


def bilinear_crop_reference(img, box, flip, size):
    """Output pixel (i, j) samples source (y0 + i (h-1)/(S-1), x0 + j (w-1)/(S-1)),
    mirrored in x when flipped, bilinearly. img (C, H, W) float."""
    x0, y0, w, h = (float(t) for t in box)
    c, height, width = img.shape
    out = torch.zeros(c, size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            sy = y0 + i * (h - 1) / (size - 1)
            sx = x0 + j * (w - 1) / (size - 1)
            if flip:
                sx = (x0 + w - 1) - j * (w - 1) / (size - 1)
            ya, xa = math.floor(sy), math.floor(sx)
            yb, xb = min(ya + 1, height - 1), min(xa + 1, width - 1)
            dy, dx = sy - ya, sx - xa
            out[:, i, j] = ((1 - dy) * (1 - dx) * img[:, ya, xa] + (1 - dy) * dx * img[:, ya, xb]
                            + dy * (1 - dx) * img[:, yb, xa] + dy * dx * img[:, yb, xb])
    return out.float()


JITTER_REFERENCE = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def reference_view(img_u8, p, v, b, gen: SimCLRViews):
    """SimCLR's pipeline for one image, one op at a time, from the drawn parameters."""
    x = img_u8.double() / 255.0
    x = bilinear_crop_reference(x, p["crop"][v, b], bool(p["flip"][v, b]), gen.size)
    if p["jitter"][v, b]:
        for op_index in p["jitter_order"][v, b].tolist():
            factor = float(p["jitter_factors"][v, b, op_index])
            if x.shape[0] == 1 and op_index >= 2:
                continue
            x = JITTER_REFERENCE[op_index](x, factor)
    if x.shape[0] == 3 and p["grayscale"][v, b]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if gen.config.blur_p > 0 and p["blur"][v, b]:
        s = float(p["blur_sigma"][v, b])
        x = TF.gaussian_blur(x, [gen.blur_kernel, gen.blur_kernel], [s, s])
    if gen.config.solarize_p > 0 and p["solarize"][v, b]:
        x = TF.solarize(x, gen.config.solarize_threshold)
    return x


@pytest.mark.parametrize("channels", [3, 1])
def test_every_view_matches_the_per_image_reference(channels, row_selection):
    cfg = SimCLRViewsConfig(n_views=2, size=12, crop_scale=[0.2, 1.0], jitter_p=0.9, grayscale_p=0.5,
                            blur_p=0.5, solarize_p=0.5, strength=1.0)
    gen = SimCLRViews(cfg, _context(channels))
    batch = _batch(b=8, c=channels)
    p = gen.draw(8, 16, 16, torch.Generator().manual_seed(5))
    for v in range(2):
        fast = gen.apply(batch.images, p, v)
        for b in range(8):
            ref = reference_view(batch.images[b], p, v, b, gen)
            torch.testing.assert_close(fast[b], ref, rtol=0, atol=2e-3,
                                       msg=lambda m, v=v, b=b: f"view {v} image {b}: {m}")


def test_forward_normalises_and_records_params():
    gen = SimCLRViews(SimCLRViewsConfig(size=16), _context())
    batch = _batch()
    views = gen(batch, torch.Generator().manual_seed(1))
    assert views.n_views == 2 and views.images[0].shape == (6, 3, 16, 16)
    raw = gen.apply(batch.images, dict(views.params), 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(views.images[1], (raw - mean) / std)
    assert views.params["crop"].shape == (2, 6, 4)


def test_same_generator_state_replays_identical_views():
    gen = SimCLRViews(SimCLRViewsConfig(), _context())
    batch = _batch()
    a = gen(batch, torch.Generator().manual_seed(7))
    b = gen(batch, torch.Generator().manual_seed(7))
    c = gen(batch, torch.Generator().manual_seed(8))
    for va, vb in zip(a.images, b.images, strict=True):
        assert torch.equal(va, vb)
    assert not torch.equal(a.images[0], c.images[0])


def test_views_are_float32_and_identical_under_autocast():
    gen = SimCLRViews(SimCLRViewsConfig(blur_p=1.0), _context())
    batch = _batch()
    plain = gen(batch, torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = gen(batch, torch.Generator().manual_seed(2))
    for a, b in zip(plain.images, mixed.images, strict=True):
        assert b.dtype == torch.float32 and torch.equal(a, b)


def test_crop_boxes_respect_bounds_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(4, 500, 32, 24, (0.08, 1.0), (3 / 4, 4 / 3), g, torch.device("cpu"))
    x0, y0, w, h = boxes.unbind(-1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 24).all() and (y0 + h <= 32).all()
    assert (w >= 1).all() and (h >= 1).all()
    area = w * h / (32 * 24)
    # rounding to whole pixels moves area and aspect slightly beyond the drawn range
    assert area.max() <= 1.0 and area.min() >= 0.08 * 0.5
    ratio = w / h
    assert ratio.min() >= 0.5 and ratio.max() <= 2.0
    assert area.std() > 0.1  # the draws really vary


def test_crop_falls_back_to_centre_when_nothing_fits():
    # an extreme aspect range cannot fit a 32x32 image at full scale: every try fails
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(1, 20, 32, 32, (1.0, 1.0), (4.0, 5.0), g, torch.device("cpu"))
    assert boxes[0, :, 2].eq(32).all() and boxes[0, :, 3].eq(8).all()  # width 32, height 32/4
    assert boxes[0, :, 1].eq(12).all()  # centred vertically


def test_probabilities_are_honoured_on_average():
    gen = SimCLRViews(SimCLRViewsConfig(flip_p=0.5, jitter_p=0.8, grayscale_p=0.2), _context())
    p = gen.draw(4000, 16, 16, torch.Generator().manual_seed(3))
    assert p["flip"].float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert p["jitter"].float().mean().item() == pytest.approx(0.8, abs=0.02)
    assert p["grayscale"].float().mean().item() == pytest.approx(0.2, abs=0.02)
    f = p["jitter_factors"]
    assert f[..., :3].min() >= 0.2 - 1e-6 and f[..., :3].max() <= 1.8 + 1e-6
    assert f[..., 3].abs().max() <= 0.2 + 1e-6
    orders = p["jitter_order"].sort(dim=-1).values
    assert torch.equal(orders, torch.arange(4).expand_as(orders))


def test_jitter_stage_order_matters_and_is_followed():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    factors = torch.tensor([[1.5, 0.3, 1.0, 0.0]] * 2)
    order = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3]])
    out = ops.color_jitter(x, factors, order)
    # the zero hue shift still round-trips through HSV: float error only
    torch.testing.assert_close(out[0], TF.adjust_contrast(TF.adjust_brightness(x[0], 1.5), 0.3), atol=2e-4, rtol=0)
    torch.testing.assert_close(out[1], TF.adjust_brightness(TF.adjust_contrast(x[1], 0.3), 1.5), atol=2e-4, rtol=0)
    swapped = ops.color_jitter(x[:1], factors[:1], order[1:])
    assert (swapped[0] - out[0]).abs().max() > 0.05


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="views.crop_scale"):
        SimCLRViewsConfig(crop_scale=[0.9, 0.1])
    with pytest.raises(ValueError, match="views.flip_p"):
        SimCLRViewsConfig(flip_p=1.5)


def test_where_rows_computes_only_the_chosen_rows_or_masks_all_of_them_with_the_same_result():
    x = torch.arange(24.0).view(4, 6)
    mask = torch.tensor([True, False, True, False])
    seen: dict[str, int] = {}

    def double(rows: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        seen[mode] = rows.shape[0]
        return rows * factor.view(-1, 1)

    factor = torch.tensor([2.0, 3.0, 4.0, 5.0])
    expected = torch.stack([x[0] * 2, x[1], x[2] * 4, x[3]])
    for mode in ("subset", "mask"):
        with ops.selection(mode):
            assert torch.equal(ops.where_rows(mask, double, x, factor), expected)
    assert seen == {"subset": 2, "mask": 4}
    with ops.selection("subset"):
        assert ops.where_rows(torch.zeros(4, dtype=torch.bool), double, x, factor) is x
    with pytest.raises(ValueError, match="selection mode"), ops.selection("gather"):
        pass
