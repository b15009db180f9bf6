"""Colour-channel views against the CIE formulas written out per pixel; view-specific
encoders encode each view with its own network."""

from __future__ import annotations

import pytest
import torch

from metacontrast.interfaces import BuildContext
from metacontrast.plugins import PluginManager, UnknownComponentError
from metacontrast_metaug.channels import channel_views
from metacontrast_metaug.encoders import (
    ChannelSplitConfig,
    ChannelSplitEncoder,
    SplitAlexNet,
    SplitAlexNetConfig,
)
from metacontrast_metaug.heads import SplitProjection, SplitProjectionConfig

SRGB_TO_XYZ = [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
WHITE = (0.95047, 1.0, 1.08883)


def lab_of_pixel(r: float, g: float, b: float) -> tuple[float, float, float]:
    """sRGB in [0, 1] -> CIE L*a*b* (D65), the textbook way."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    xyz = [sum(m * c for m, c in zip(row, lin, strict=True)) / w for row, w in zip(SRGB_TO_XYZ, WHITE, strict=True)]
    eps = (6 / 29) ** 3

    def f(t: float) -> float:
        return t ** (1 / 3) if t > eps else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = (f(t) for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def test_channel_views_are_the_cie_lab_channels_scaled():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 4, 5, generator=g)
    rgb[0, :, 0, 0] = 0.0  # black and white corners
    rgb[0, :, 0, 1] = 1.0
    rgb_view, light, ab, lab = channel_views(rgb, ["RGB", "L", "ab", "Lab"])
    assert light.shape == (2, 1, 4, 5) and ab.shape == (2, 2, 4, 5) and lab.shape == (2, 3, 4, 5)
    torch.testing.assert_close(rgb_view, rgb * 2 - 1)
    for n in range(2):
        for y in range(4):
            for x in range(5):
                ell, a, b = lab_of_pixel(*rgb[n, :, y, x].tolist())
                assert light[n, 0, y, x].item() == pytest.approx(ell / 50 - 1, abs=2e-3)
                assert ab[n, 0, y, x].item() == pytest.approx(a / 110, abs=2e-3)
                assert ab[n, 1, y, x].item() == pytest.approx(b / 110, abs=2e-3)
    torch.testing.assert_close(lab, torch.cat([light, ab], 1))


def test_channel_views_refuse_grey_images_and_unknown_names():
    with pytest.raises(ValueError, match=r"need RGB images \(N, 3, H, W\), got \(1, 1, 4, 4\)"):
        channel_views(torch.rand(1, 1, 4, 4), ["L"])
    with pytest.raises(ValueError, match="unknown channel view 'HSV'"):
        SplitAlexNet(SplitAlexNetConfig(views=["HSV"]), _context())
    with pytest.raises(ValueError, match="channel views need RGB images, the dataset has 1"):
        SplitAlexNet(SplitAlexNetConfig(), _context(channels=1))


def _context(channels: int = 3) -> BuildContext:
    return BuildContext(in_channels=channels, image_size=32, mean=(0.4, 0.5, 0.6)[:channels],
                        std=(0.2, 0.25, 0.3)[:channels])


@pytest.mark.parametrize("variant", ["conv", "fc"])
def test_split_alexnet_encodes_each_view_with_its_own_network(variant):
    ctx = _context()
    enc = SplitAlexNet(SplitAlexNetConfig(views=["L", "ab"], variant=variant, width=0.125), ctx).eval()
    g = torch.Generator().manual_seed(1)
    rgb = torch.rand(3, 3, 32, 32, generator=g)
    normalised = (rgb - torch.tensor(ctx.mean).view(1, 3, 1, 1)) / torch.tensor(ctx.std).view(1, 3, 1, 1)
    h = enc(normalised)
    light, ab = channel_views(rgb, ["L", "ab"])
    torch.testing.assert_close(h, torch.cat([enc.nets[0](light), enc.nets[1](ab)], 1), rtol=1e-4, atol=1e-5)
    assert enc.parts == 2 and h.shape == (3, enc.out_dim) and enc.out_dim == 2 * enc.view_dim
    assert enc.nets[0].conv[0].in_channels == 1 and enc.nets[1].conv[0].in_channels == 2
    assert (enc.nets[0].fc is None) == (variant == "conv")


def test_channel_split_builds_any_registered_encoder_per_view_and_heads_follow_the_parts():
    ctx = _context().evolve(plugins=PluginManager())
    enc = ChannelSplitEncoder(ChannelSplitConfig(views=["RGB", "L", "ab"], encoder={"name": "conv4", "hidden": 8, "pool": "avg"}), ctx)
    assert [net.NAME for net in enc.nets] == ["conv4"] * 3 and enc.parts == 3
    h = enc(torch.randn(4, 3, 32, 32))
    assert h.shape == (4, enc.out_dim)
    head = SplitProjection(SplitProjectionConfig(hidden_dims=[16], out_dim=5),
                           ctx.evolve(encoder_dim=enc.out_dim, encoder_parts=enc.parts))
    z = head(h)
    assert z.shape == (4, 15) and head.parts == 3
    for j in range(3):
        torch.testing.assert_close(z[:, 5 * j:5 * (j + 1)].norm(dim=1), torch.ones(4))
        part = h.chunk(3, dim=1)[j]
        ref = torch.nn.functional.normalize(head.heads[j](part), dim=1)
        torch.testing.assert_close(z[:, 5 * j:5 * (j + 1)], ref)
    with pytest.raises(UnknownComponentError, match="encoder.encoder.name: unknown encoder .nope."):
        ChannelSplitEncoder(ChannelSplitConfig(encoder={"name": "nope"}), ctx)
