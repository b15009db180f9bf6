"""Fine-tuning the whole encoder with a linear classifier on labelled images: the
training loop shared by the semi-supervised and transfer protocols.

The encoder is copied (the pre-trained one is never touched), a linear layer is put on
its representation ``h``, and both are trained with SGD (Nesterov momentum, learning rate
``lr * batch / 256`` decayed per step) on random resized crops and flips of the images,
BatchNorm in training mode. Prediction uses the clean images, everything in eval mode.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacontrast.classifiers import SCHEDULES, lr_factor
from metacontrast.evaluation import extract_features
from metacontrast.imageops import normalize, random_resized_crop_flip


@attrs.define
class FineTuneSchedule:
    """``epochs`` over the labelled images (``max_steps`` > 0 caps the steps), minibatch
    ``batch_size`` (capped at the number of images), ``lr`` (times ``batch / 256``),
    ``momentum``, ``nesterov``, ``weight_decay`` (on every parameter; 0 in the papers'
    semi-supervised protocol), ``schedule`` (linear | cosine | constant), ``augment``:
    random resized crop (area in ``crop_scale``) + flip."""

    epochs: int = 60
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: str = "linear"
    augment: bool = True
    crop_scale: Sequence[float] = (0.08, 1.0)
    max_steps: int = 0

    def __attrs_post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_steps < 0:
            raise ValueError("epochs and batch_size must be >= 1, lr > 0, max_steps >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: unknown {self.schedule!r}; available: {', '.join(SCHEDULES)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")


class Classifier(nn.Module):
    """``encoder`` -> ``h (N, D)`` -> ``Linear(D, classes)`` -> scores ``(N, classes)``."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.linear = nn.Linear(int(encoder.out_dim), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.encoder(x).float())


def fine_tune(encoder: nn.Module, images: Tensor, labels: Tensor, num_classes: int, *,
              mean: Sequence[float], std: Sequence[float], schedule: FineTuneSchedule,
              generator: torch.Generator,
              autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
              channels_last: bool = False) -> Classifier:
    """Train a copy of ``encoder`` and a linear layer on uint8 ``images (N, C, H, W)`` with
    ``labels (N,)``; returns the classifier (eval mode). ``generator`` (on the images'
    device) draws the minibatch order and the augmentation."""
    device = images.device
    model = Classifier(copy.deepcopy(encoder), num_classes).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    n = images.shape[0]
    batch = min(schedule.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = steps_per_epoch * schedule.epochs
    if schedule.max_steps > 0:
        total = min(total, schedule.max_steps)
    base_lr = schedule.lr * batch / 256
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=schedule.momentum,
                          nesterov=schedule.nesterov and schedule.momentum > 0,
                          weight_decay=schedule.weight_decay)
    labels = labels.to(device)
    model.train()
    step = 0
    with torch.enable_grad():
        while step < total:
            order = torch.randperm(n, device=device, generator=generator)
            for start in range(0, n, batch):
                if step >= total:
                    break
                rows = order[start:start + batch]
                x = images[rows].float() / 255.0
                if schedule.augment:
                    x = random_resized_crop_flip(x, generator, scale=schedule.crop_scale)
                x = normalize(x, mean, std)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for group in opt.param_groups:
                    group["lr"] = base_lr * lr_factor(schedule.schedule, step, total)
                opt.zero_grad(set_to_none=True)
                with autocast():
                    scores = model(x)
                F.cross_entropy(scores.float(), labels[rows]).backward()
                opt.step()
                step += 1
    return model.eval()


def predict(model: nn.Module, images: Tensor, *, mean: Sequence[float], std: Sequence[float],
            batch_size: int,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
            channels_last: bool = False) -> Tensor:
    """Scores ``(N, classes)`` of uint8 ``images (N, C, H, W)`` in eval mode (the frozen
    feature extraction, with the classifier as the network)."""
    return extract_features(model, images, mean=mean, std=std, batch_size=batch_size, autocast=autocast,
                            channels_last=channels_last)
