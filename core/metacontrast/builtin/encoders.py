"""Built-in encoders: ResNet-18/50 (torchvision, optional CIFAR stem), Conv-4, and any
torchvision classification backbone named by a ``_target_`` node."""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torchvision
from torch import Tensor, nn

from metacontrast.interfaces import BuildContext, Encoder, ExportSpec
from metacontrast.targets import instantiate_checked


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
        self.cifar_stem = config.cifar_stem

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def export_spec(self, library: str) -> ExportSpec | None:
        """The same network in torchvision and in timm (their ResNets share parameter names);
        a CIFAR stem or a non-RGB first convolution is a replaced ``conv1`` (and ``maxpool``)."""
        if library not in ("torchvision", "timm"):
            return None
        conv = self.net.conv1
        replace: dict[str, dict] = {}
        if self.cifar_stem or conv.in_channels != 3:
            replace["conv1"] = {"type": "Conv2d", "args": [conv.in_channels, conv.out_channels],
                                "kwargs": {"kernel_size": conv.kernel_size[0], "stride": conv.stride[0],
                                           "padding": conv.padding[0], "bias": False}}
        if self.cifar_stem:
            replace["maxpool"] = {"type": "Identity"}
        if library == "torchvision":
            replace["fc"] = {"type": "Identity"}  # timm's num_classes=0 drops it already
        return ExportSpec(library=library, builder=self.ARCH, module=self.net, replace=replace)


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


def _default_backbone() -> dict[str, Any]:
    return {"_target_": "torchvision.models.resnet34"}


@attrs.define
class TorchvisionConfig:
    """``model``: a node ``{_target_: torchvision.models.<builder>, <its arguments>}``
    (checked against the ``_target_`` allowlist before anything is imported). The
    classifier (its last ``nn.Linear``: ``fc``, ``classifier``, ``head`` or ``heads``) is
    replaced by the identity."""

    model: dict[str, Any] = attrs.field(factory=_default_backbone)


class TorchvisionBackbone(Encoder):
    """Any torchvision classification model without its classifier:
    ``(N, 3, H, W) -> (N, out_dim)`` (grey ``(N, 1, H, W)`` is repeated to 3 channels);
    ``out_dim`` is measured on a blank image."""

    NAME = "torchvision"
    Config = TorchvisionConfig

    def __init__(self, config: TorchvisionConfig, context: BuildContext) -> None:
        super().__init__()
        if context.in_channels not in (1, 3):
            raise ValueError(f"torchvision backbones take 3-channel (or grey) images, the data "
                             f"has {context.in_channels} channels")
        self.config_model = dict(config.model)
        net = instantiate_checked(config.model, context.allowed_targets, key="encoder.model")
        if not isinstance(net, nn.Module):
            raise ValueError(f"model: {config.model.get('_target_')} built a {type(net).__name__}, "
                             f"not a torch.nn.Module")
        self.classifier_path = _drop_classifier(net)
        self.net = net
        with torch.no_grad():
            was = net.training
            net.eval()
            self.out_dim = int(net(torch.zeros(1, 3, context.image_size, context.image_size)).shape[1])
            net.train(was)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x).flatten(1)

    def export_spec(self, library: str) -> ExportSpec | None:
        """The torchvision model itself, its classifier replaced by the identity."""
        if library != "torchvision":
            return None
        target = str(self.config_model.get("_target_", ""))
        kwargs = {k: v for k, v in self.config_model.items() if k != "_target_"}
        return ExportSpec(library="torchvision", builder=target.rsplit(".", 1)[-1], module=self.net,
                          kwargs=kwargs, replace={self.classifier_path: {"type": "Identity"}},
                          repeat_grey=True)


def _drop_classifier(net: nn.Module) -> str:
    """Replace the last ``nn.Linear`` of ``fc``/``classifier``/``head``/``heads`` by the
    identity; returns its module path (``fc``, ``classifier.1``)."""
    for name in ("fc", "classifier", "head", "heads"):
        part = getattr(net, name, None)
        if isinstance(part, nn.Linear):
            setattr(net, name, nn.Identity())
            return name
        if isinstance(part, nn.Sequential):
            for i in reversed(range(len(part))):
                if isinstance(part[i], nn.Linear):
                    part[i] = nn.Identity()
                    return f"{name}.{i}"
    raise ValueError(f"{type(net).__name__}: no classifier found (fc, classifier, head or heads)")
