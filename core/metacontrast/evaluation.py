"""Frozen-feature evaluation: extract features, run the configured evaluators."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from metacontrast.data import ImageData
from metacontrast.imageops import normalize
from metacontrast.interfaces import Evaluator
from metacontrast.records import Features


@torch.no_grad()
def extract_features(encoder: nn.Module, images: Tensor, *, mean: Sequence[float],
                     std: Sequence[float], batch_size: int,
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                     channels_last: bool = False) -> Tensor:
    """uint8 ``images (N, C, H, W)`` -> float32 features ``(N, D)`` with the encoder in
    eval mode (its mode is restored afterwards)."""
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start:start + batch_size], mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                out.append(encoder(x).float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def raw_pixel_features(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The baseline representation: normalised pixels flattened to ``(N, C * H * W)``."""
    return normalize(images, mean, std).flatten(1)


def run_evaluators(evaluators: Mapping[str, Evaluator],
                   features: Callable[[Tensor], Tensor], data: ImageData,
                   train_index: Tensor) -> dict[str, float]:
    """Apply every evaluator to ``features`` of the train subset and of the test split."""
    train = Features(features(data.train_images[train_index.to(data.train_images.device)]),
                     data.train_labels[train_index.to(data.train_labels.device)])
    test = Features(features(data.test_images), data.test_labels)
    metrics: dict[str, float] = {}
    owner: dict[str, str] = {}
    for name, ev in evaluators.items():
        for metric, value in ev.evaluate(train, test).items():
            if metric in owner:
                raise ValueError(f"eval.{name}: reports {metric!r}, which eval.{owner[metric]} reports "
                                 f"too; keep one of them")
            owner[metric] = name
            metrics[metric] = value
    return metrics
