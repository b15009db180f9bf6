"""View-specific encoders over colour-channel views: ``split_alexnet`` and
``channel_split`` (any registered encoder, one per view).

Both take the images as every other encoder does (normalised RGB ``(N, 3, H, W)``),
undo the dataset normalisation, make the channel views on the device
(``metacontrast_metaug.channels``), encode each with its own network and concatenate:
``h = [h_1, ..., h_M]`` of shape ``(N, M * D_v)``. Evaluation therefore reads the
layer-wise concatenation of the views' representations, as MetAug's appendix B.1 does;
``parts = M`` tells heads and losses where each view's share of ``h`` lies.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn

from metacontrast.interfaces import BuildContext, Encoder
from metacontrast_metaug.alexnet import AlexNetHalf
from metacontrast_metaug.channels import CHANNELS, channel_views, check_channel_views


class ChannelViewEncoder(Encoder):
    """Shared part: denormalise, split into channel views, encode per view, concatenate."""

    def __init__(self, views: list[str], context: BuildContext) -> None:
        super().__init__()
        check_channel_views(views)
        if context.in_channels != 3:
            raise ValueError(f"views: channel views need RGB images, the dataset has "
                             f"{context.in_channels} channel(s)")
        self.views = list(views)
        self.parts = len(views)
        self.register_buffer("mean", torch.tensor(context.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(context.std).view(1, 3, 1, 1), persistent=False)
        self.nets = nn.ModuleList()

    def _finish(self) -> None:
        dims = {int(net.out_dim) for net in self.nets}
        if len(dims) != 1:
            raise ValueError(f"encoder: the views' encoders must give one width, got {sorted(dims)}")
        self.view_dim = dims.pop()
        self.out_dim = self.view_dim * self.parts

    def forward(self, x: Tensor) -> Tensor:
        """Normalised RGB ``(N, 3, H, W)`` -> ``h (N, M * D_v)``."""
        rgb = x * self.std.to(x.dtype) + self.mean.to(x.dtype)
        parts = channel_views(rgb, self.views)
        return torch.cat([net(p.to(x.dtype)) for net, p in zip(self.nets, parts, strict=True)], dim=1)


@attrs.define
class SplitAlexNetConfig:
    """``views``: channel views (CMC: L and ab; MetAug also uses RGB). ``variant``: the
    representation read by evaluation, ``conv`` (fifth convolution) or ``fc`` (second
    fully connected layer). ``stem``: small (32-64 px) or imagenet. ``width``: fraction of
    AlexNet's channels per view (0.5: split in halves). ``pool``: output side of the
    average pool after the fifth convolution."""

    views: list[str] = attrs.field(factory=lambda: ["L", "ab"])
    variant: str = "fc"
    stem: str = "small"
    width: float = 0.5
    pool: int = 2


class SplitAlexNet(ChannelViewEncoder):
    NAME = "split_alexnet"
    Config = SplitAlexNetConfig

    def __init__(self, config: SplitAlexNetConfig, context: BuildContext) -> None:
        super().__init__(config.views, context)
        self.config = config
        for name in config.views:
            self.nets.append(AlexNetHalf(CHANNELS[name], config.variant, config.stem, config.width,
                                         config.pool))
        self._finish()


@attrs.define
class ChannelSplitConfig:
    """``views``: channel views. ``encoder``: any registered encoder's config (with its
    ``name``), built once per view with that view's channel count."""

    views: list[str] = attrs.field(factory=lambda: ["L", "ab"])
    encoder: dict[str, Any] = attrs.field(factory=lambda: {"name": "conv4"})


class ChannelSplitEncoder(ChannelViewEncoder):
    NAME = "channel_split"
    Config = ChannelSplitConfig

    def __init__(self, config: ChannelSplitConfig, context: BuildContext) -> None:
        super().__init__(config.views, context)
        from metacontrast.builder import build_one

        self.config = config
        if context.plugins is None:
            raise ValueError("encoder: channel_split builds registered encoders; it needs the plugin "
                             "registry in its BuildContext")
        if "name" not in config.encoder:
            raise ValueError("encoder.encoder: must name the encoder built per view (name: ...)")
        for name in config.views:
            c = CHANNELS[name]
            sub = context.evolve(in_channels=c, mean=(0.0,) * c, std=(1.0,) * c)
            net = build_one(context.plugins, "encoder", "encoder.encoder", dict(config.encoder), sub)
            self.nets.append(net)
        self._finish()
