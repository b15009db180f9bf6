"""Built-in encoders: ResNet-18/50 (torchvision, optional CIFAR stem) and Conv-4."""

from __future__ import annotations

import attrs
import torch
import torchvision
from torch import Tensor, nn

from metacontrast.interfaces import BuildContext, Encoder


@attrs.define
class ResNetConfig:
    """``cifar_stem``: 3x3 stride-1 first convolution and no max-pool, as for 32-pixel
    images. ``zero_init_residual``: zero the last BN of each residual block."""

    cifar_stem: bool = False
    zero_init_residual: bool = False


class _TorchvisionResNet(Encoder):
    """A torchvision ResNet without its classifier: ``(N, C, H, W) -> (N, out_dim)``."""

    Config = ResNetConfig
    ARCH = "resnet18"

    def __init__(self, config: ResNetConfig, context: BuildContext) -> None:
        super().__init__()
        net = getattr(torchvision.models, self.ARCH)(
            weights=None, zero_init_residual=config.zero_init_residual)
        if config.cifar_stem:
            net.conv1 = nn.Conv2d(context.in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif context.in_channels != 3:
            net.conv1 = nn.Conv2d(context.in_channels, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.out_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResNet18(_TorchvisionResNet):
    NAME = "resnet18"
    ARCH = "resnet18"


class ResNet50(_TorchvisionResNet):
    NAME = "resnet50"
    ARCH = "resnet50"


@attrs.define
class Conv4Config:
    """``hidden``: channels of each of the four blocks. ``pool``: ``flatten`` (the
    classic few-shot Conv-4) or ``avg`` (global average pooling, size-independent)."""

    hidden: int = 64
    pool: str = "flatten"

    def __attrs_post_init__(self) -> None:
        if self.pool not in ("flatten", "avg"):
            raise ValueError(f"encoder.pool must be 'flatten' or 'avg', got {self.pool!r}")


class Conv4(Encoder):
    """Four blocks of conv3x3-BN-ReLU-maxpool2 (the few-shot learning backbone)."""

    NAME = "conv4"
    Config = Conv4Config

    def __init__(self, config: Conv4Config, context: BuildContext) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = context.in_channels
        for _ in range(4):
            layers += [nn.Conv2d(channels, config.hidden, 3, padding=1, bias=False),
                       nn.BatchNorm2d(config.hidden), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = config.hidden
        self.features = nn.Sequential(*layers)
        self.pool = config.pool
        side = context.image_size // 16
        if self.pool == "flatten" and side < 1:
            raise ValueError(f"encoder conv4 with pool=flatten needs images of at least 16 "
                             f"pixels, data gives {context.image_size}")
        self.out_dim = config.hidden * (side * side if self.pool == "flatten" else 1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        if self.pool == "avg":
            return f.mean(dim=(2, 3))
        return torch.flatten(f, 1)
