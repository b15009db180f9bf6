"""Any timm model as an encoder: ``(N, C, H, W) -> (N, num_features)``.

The model is made by ``timm.create_model(model, num_classes=0, in_chans=C)`` (the
classifier dropped, the first layer sized for the data's channels). Models that cut the
image into patches (ViT, DeiT, Swin: those with a ``patch_embed``) are made for the data's
image size, with a patch that leaves at least 8 x 8 tokens (``patch_size: 0``) or the one
given. Pretrained weights come only from a local file (``pretrained_file``); nothing is
ever downloaded. Precision and ``channels_last`` are the trainer's, as for every encoder.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import attrs
import timm
import torch
from torch import Tensor

from metacontrast.config import ConfigError
from metacontrast.interfaces import BuildContext, Encoder, ExportSpec


@attrs.define
class TimmConfig:
    """``model``: a timm model name (``timm.list_models()``). ``pretrained_file``: a local
    ``.safetensors``/``.pth`` of that model's weights (empty: random initialisation).
    ``patch_size``: for patch models, 0 = the model's own patch, made smaller until the
    image gives at least 8 x 8 patches. ``kwargs``: more ``timm.create_model`` arguments
    (``drop_path_rate: 0.1``), JSON values."""

    model: str = "resnet18"
    pretrained_file: str = ""
    patch_size: int = 0
    kwargs: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not timm.is_model(self.model):
            close = difflib.get_close_matches(self.model, timm.list_models(), n=6, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
            raise ValueError(f"model {self.model!r} is not a timm model{hint}")
        if self.patch_size < 0:
            raise ValueError(f"patch_size must be 0 (automatic) or positive, got {self.patch_size}")


def choose_patch(image_size: int, own_patch: int, asked: int) -> int:
    """The patch size for images of side ``image_size``: ``asked`` when set (it must
    divide the side), else the model's ``own_patch`` halved until the side holds at least
    8 patches and is divisible by it."""
    if asked:
        if image_size % asked:
            raise ConfigError(f"encoder.patch_size: {asked} does not divide the image side {image_size}")
        return asked
    patch = own_patch
    while patch > 1 and (image_size // patch < 8 or image_size % patch):
        patch //= 2
    return max(1, patch)


class TimmEncoder(Encoder):
    """A timm model without its classifier; ``out_dim`` is its ``num_features``."""

    NAME = "timm"
    Config = TimmConfig

    def __init__(self, config: TimmConfig, context: BuildContext) -> None:
        super().__init__()
        kwargs: dict[str, Any] = {"in_chans": context.in_channels, **config.kwargs}
        with torch.device("meta"):  # a shape-only probe: is it a patch model, of which patch?
            probe = timm.create_model(config.model, pretrained=False, num_classes=0, **kwargs)
        embed = getattr(probe, "patch_embed", None)
        if embed is not None and hasattr(embed, "patch_size"):
            patch = embed.patch_size
            own = int(patch[0]) if isinstance(patch, tuple | list) else int(patch)
            kwargs.update(img_size=context.image_size,
                          patch_size=choose_patch(context.image_size, own, config.patch_size))
        elif config.patch_size:
            raise ConfigError(f"encoder.patch_size: {config.model} does not cut images into patches")
        self.create_kwargs = kwargs
        self.model_name = config.model
        self.net = self._create(config, kwargs)
        self.out_dim = int(self.net.num_features)

    @staticmethod
    def _create(config: TimmConfig, kwargs: dict[str, Any]) -> torch.nn.Module:
        if not config.pretrained_file:
            return timm.create_model(config.model, pretrained=False, num_classes=0, **kwargs)
        path = Path(config.pretrained_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"encoder.pretrained_file: {path} does not exist (weights are read from "
                              f"a local file only, never downloaded)")
        return timm.create_model(config.model, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"file": str(path)}, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def export_spec(self, library: str) -> ExportSpec | None:
        """The timm model itself (``metacontrast export format=timm``)."""
        if library != "timm":
            return None
        return ExportSpec(library="timm", builder=self.model_name, module=self.net,
                          kwargs=dict(self.create_kwargs))
