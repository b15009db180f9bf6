"""View transforms on the device: large rotations (as task augmentation, the naive
per-view variant, and rotated copies for the rotation loss) and Un-Mix mixing.

All are batched: a rotation by ``k * 90`` degrees is ``torch.rot90`` applied to the
samples that drew ``k``; every random number comes from the step's generator.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from metacontrast.interfaces import BuildContext, ViewTransform
from metacontrast.records import Mixing, ShapeError, Views


def rotate(images: Tensor, quarter_turns: Tensor) -> Tensor:
    """Rotate each ``images[i] (C, H, H)`` counter-clockwise by ``quarter_turns[i] * 90``
    degrees. ``images (B, C, H, H)``, ``quarter_turns (B,)`` in 0..3."""
    if images.shape[-1] != images.shape[-2]:
        raise ShapeError(f"rotations need square images, got {tuple(images.shape[-2:])}")
    out = images.clone()
    for k in (1, 2, 3):
        sel = (quarter_turns == k).nonzero().flatten()
        if sel.numel():
            out[sel] = torch.rot90(images[sel], k, dims=(-2, -1))
    return out


def _angles(shape: tuple[int, ...], probabilities: list[float], generator: torch.Generator) -> Tensor:
    p = torch.tensor(probabilities, dtype=torch.float32, device=generator.device)
    n = 1
    for s in shape:
        n *= s
    return torch.multinomial(p, n, replacement=True, generator=generator).view(shape)


def _check_probabilities(p: list[float]) -> None:
    if len(p) != 4 or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
        raise ValueError(f"probabilities must be 4 non-negative numbers (0, 90, 180, 270 degrees) "
                         f"summing to 1, got {p}")


@attrs.define
class RotationConfig:
    """``probabilities`` of 0, 90, 180 and 270 degrees (the paper: 0.25 each)."""

    probabilities: list[float] = attrs.field(factory=lambda: [0.25, 0.25, 0.25, 0.25])

    def __attrs_post_init__(self) -> None:
        _check_probabilities(self.probabilities)


class TaskRotation(ViewTransform):
    """Large rotation as task augmentation: one angle per image, applied to all its views
    (support and query alike), so a rotated image is a new class (image, angle).
    ``params["task_rotation"] (V, B)``: quarter turns."""

    NAME = "task_rotation"
    Config = RotationConfig
    ORDER = 10
    PER_VIEW = False

    def __init__(self, config: RotationConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, views: Views, generator: torch.Generator) -> Views:
        v, b = views.n_views, views.batch_size
        if self.PER_VIEW:
            turns = _angles((v, b), self.config.probabilities, generator)
        else:
            turns = _angles((b,), self.config.probabilities, generator).expand(v, b)
        images = tuple(rotate(x, turns[i]) for i, x in enumerate(views.images))
        return views.evolve(images=images, params={**views.params, "task_rotation": turns.contiguous()})


class NaiveRotation(TaskRotation):
    """The naive variant (the paper's Table 5): each view rotated independently, so the
    views of one image disagree; kept for the comparison."""

    NAME = "naive_rotation"
    PER_VIEW = True


class RotationCopies(ViewTransform):
    """Input of the rotation loss: a copy of every view rotated by a random angle
    (uniform over the four), in ``Views.extra["rotation"] (V*B, C, H, W)`` with the quarter
    turns in ``params["rotation_angle"] (V, B)``. The views themselves are unchanged."""

    NAME = "rotation_copies"
    Config = RotationConfig
    ORDER = 30

    def __init__(self, config: RotationConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, views: Views, generator: torch.Generator) -> Views:
        v, b = views.n_views, views.batch_size
        turns = _angles((v, b), self.config.probabilities, generator)
        copies = torch.cat([rotate(x, turns[i]) for i, x in enumerate(views.images)])
        return views.evolve(extra={**views.extra, "rotation": copies},
                            params={**views.params, "rotation_angle": turns})


@attrs.define
class UnMixConfig:
    """``cutmix_p``: probability of CutMix instead of mixup for a batch (the paper: 0.5).
    ``view``: which view is mixed (-1: the last, a query view in support/query episodes).
    The mixing weight is drawn from Beta(1, 1) = U(0, 1), as in Un-Mix."""

    cutmix_p: float = 0.5
    view: int = -1

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.cutmix_p <= 1.0:
            raise ValueError(f"cutmix_p must be in [0, 1], got {self.cutmix_p}")


class UnMix(ViewTransform):
    """Un-Mix (Shen et al., 2020) as used by the meta-learning paper: one view of each
    image ``b`` is mixed with the same view of image ``B - 1 - b`` (the batch in reverse
    order), by mixup or CutMix with one weight per batch. ``Views.mix``: ``weight (V, B)``
    is the image's own share (lambda for the mixed view, 1 elsewhere) and
    ``partner (V, B)`` the local index of the image mixed in."""

    NAME = "unmix"
    Config = UnMixConfig
    ORDER = 20
    MIXES = True

    def __init__(self, config: UnMixConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(self, views: Views, generator: torch.Generator) -> Views:
        v, b = views.n_views, views.batch_size
        target = self.config.view % v
        x = views.images[target]
        dev = generator.device
        lam = torch.rand((), generator=generator, device=dev)
        cutmix = torch.rand((), generator=generator, device=dev) < self.config.cutmix_p
        reverse = torch.arange(b - 1, -1, -1, device=x.device)
        if bool(cutmix):
            mixed, lam = cutmix_images(x, x[reverse], lam, generator)
        else:
            mixed = lam * x + (1 - lam) * x[reverse]
        weight = torch.ones(v, b, device=x.device)
        weight[target] = lam
        partner = torch.arange(b, device=x.device).repeat(v, 1)
        partner[target] = reverse
        images = tuple(mixed if i == target else img for i, img in enumerate(views.images))
        return views.evolve(images=images, mix=Mixing(weight=weight, partner=partner))


def cutmix_images(x: Tensor, other: Tensor, lam: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Paste a box of ``other`` covering about ``1 - lam`` of the area into ``x`` (one
    box for the batch). Returns the images and the exact share of ``x`` that remains."""
    h, w = x.shape[-2:]
    cut = torch.sqrt(1 - lam)
    ch, cw = int(torch.round(cut * h)), int(torch.round(cut * w))
    cy = int(torch.randint(0, h, (), generator=generator, device=generator.device))
    cx = int(torch.randint(0, w, (), generator=generator, device=generator.device))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return out, torch.tensor(kept, device=x.device, dtype=x.dtype)
