"""Built-in heads: an MLP projection head and the identity."""

from __future__ import annotations

import attrs
from torch import Tensor, nn

from metacontrast.interfaces import BuildContext, Head


@attrs.define
class MLPConfig:
    """``layers``: number of linear layers (2 = SimCLR's ``W2 relu(W1 h)``).
    ``hidden_dim``: width of hidden layers (0 = the encoder's D). ``out_dim``: D of z.
    ``batchnorm``: BN after each hidden linear layer. ``last_bn``: BN (no affine) on z."""

    layers: int = 2
    hidden_dim: int = 0
    out_dim: int = 128
    batchnorm: bool = True
    last_bn: bool = False

    def __attrs_post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"head.layers must be >= 1, got {self.layers}")


class MLPHead(Head):
    """``h (N, D_in) -> z (N, out_dim)`` through ``layers`` linear layers with ReLU."""

    NAME = "mlp"
    Config = MLPConfig

    def __init__(self, config: MLPConfig, context: BuildContext) -> None:
        super().__init__()
        hidden = config.hidden_dim or context.encoder_dim
        dims = [context.encoder_dim] + [hidden] * (config.layers - 1) + [config.out_dim]
        blocks: list[nn.Module] = []
        for i in range(config.layers):
            last = i == config.layers - 1
            blocks.append(nn.Linear(dims[i], dims[i + 1], bias=last or not config.batchnorm))
            if not last:
                if config.batchnorm:
                    blocks.append(nn.BatchNorm1d(dims[i + 1]))
                blocks.append(nn.ReLU(inplace=True))
        if config.last_bn:
            blocks.append(nn.BatchNorm1d(config.out_dim, affine=False))
        self.net = nn.Sequential(*blocks)
        self.out_dim = config.out_dim

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class IdentityHead(Head):
    """``z = h``: the loss is taken on the representation itself."""

    NAME = "identity"

    def __init__(self, config: object, context: BuildContext) -> None:
        super().__init__()
        self.out_dim = context.encoder_dim

    def forward(self, h: Tensor) -> Tensor:
        return h
