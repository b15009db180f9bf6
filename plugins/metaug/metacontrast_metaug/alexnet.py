"""One channel view's half of the split AlexNet (SplitBrain, CMC, MetAug appendix B.1):
five convolutional layers (``conv``) and two fully connected layers (``fc``), each with
BatchNorm and ReLU, at half of AlexNet's widths per view (``width`` scales them)."""

from __future__ import annotations

from torch import Tensor, nn

CONV_WIDTHS = (96, 256, 384, 384, 256)
FC_WIDTH = 4096


def _block(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class AlexNetHalf(nn.Module):
    """``(N, C_v, H, W) -> (N, D)``: ``D = conv_dim`` for ``variant="conv"`` (the fifth
    convolution, average-pooled to ``pool x pool``) or ``fc_dim`` for ``variant="fc"``.

    ``stem="small"``: 3x3 convolutions and three 2x2 max-pools (32- to 64-pixel images);
    ``stem="imagenet"``: AlexNet's 11x11 stride-4 and 5x5 first layers with 3x3 stride-2
    pools. ``width``: fraction of AlexNet's channels (0.5 = the per-view half of CMC).
    """

    def __init__(self, in_channels: int, variant: str = "fc", stem: str = "small", width: float = 0.5,
                 pool: int = 2) -> None:
        super().__init__()
        if variant not in ("conv", "fc"):
            raise ValueError(f"variant: must be conv or fc, got {variant!r}")
        if stem not in ("small", "imagenet"):
            raise ValueError(f"stem: must be small or imagenet, got {stem!r}")
        if width <= 0:
            raise ValueError(f"width: must be > 0, got {width}")
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in CONV_WIDTHS)
        if stem == "small":
            layers = [*_block(in_channels, c1, 3, padding=1), nn.MaxPool2d(2),
                      *_block(c1, c2, 3, padding=1), nn.MaxPool2d(2),
                      *_block(c2, c3, 3, padding=1), *_block(c3, c4, 3, padding=1),
                      *_block(c4, c5, 3, padding=1), nn.MaxPool2d(2)]
        else:
            layers = [*_block(in_channels, c1, 11, stride=4, padding=2), nn.MaxPool2d(3, 2),
                      *_block(c1, c2, 5, padding=2), nn.MaxPool2d(3, 2),
                      *_block(c2, c3, 3, padding=1), *_block(c3, c4, 3, padding=1),
                      *_block(c4, c5, 3, padding=1), nn.MaxPool2d(3, 2)]
        self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.conv_dim = c5 * pool * pool
        fc = max(1, round(FC_WIDTH * width))
        self.fc = None
        self.out_dim = self.conv_dim
        if variant == "fc":
            self.fc = nn.Sequential(nn.Linear(self.conv_dim, fc, bias=False), nn.BatchNorm1d(fc),
                                    nn.ReLU(inplace=True), nn.Linear(fc, fc, bias=False),
                                    nn.BatchNorm1d(fc), nn.ReLU(inplace=True))
            self.out_dim = fc

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        return self.fc(h) if self.fc is not None else h
