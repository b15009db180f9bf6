"""The linear evaluation protocol: a linear classifier on the frozen encoder's features.

Every solver minimises one objective on standardised features ``x' = (x - mu) / sd``
(``mu``, ``sd`` measured on the clean train features):

    J(W, b) = mean_i loss(W x'_i + b, y_i) + weight_decay / 2 * ||W||^2

with ``loss`` = ``logistic`` (softmax cross-entropy) or ``squared`` (half the squared
distance to the one-hot label). ``solver``: ``lbfgs`` (full batch, cached features, the
fast default), ``sgd`` (minibatch SGD with Nesterov momentum and a cosine or linear
decay, the schedule of SimCLR's and Ni et al.'s protocol; with ``augment`` the train
images are re-cropped, flipped and re-encoded every epoch), ``closed_form`` (``squared``
only: the exact ridge solution of J).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metacontrast.classifiers import (
    LinearProbeConfig,
    fit_linear_classifier,
    topk_accuracies,
)
from metacontrast.imageops import random_resized_crop_flip
from metacontrast.interfaces import BuildContext, Evaluator
from metacontrast.records import EvalInputs, Features


class LinearProbeEvaluator(Evaluator):
    """Top-1/top-5 of a linear classifier trained on the frozen encoder's train features
    (metrics named after the config key: ``eval.linear`` -> ``linear_top1``)."""

    NAME = "linear"
    Config = LinearProbeConfig

    def __init__(self, config: LinearProbeConfig, context: BuildContext | None) -> None:
        super().__init__(config, context)
        if config.augment and context is not None and context.modality != "image":
            raise ValueError(f"augment: crops and flips images; {context.modality} data need augment=false")
        # an augmented probe re-encodes images every epoch: it needs the encoder and is slow
        self.NEEDS_ENCODER = config.augment
        self.PERIODIC = config.solver != "sgd"

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        probe = fit_linear_classifier(train, num_classes, self.config)
        return topk_accuracies(probe.scores(test.x), test.y, self.key)

    def run(self, inputs: EvalInputs) -> dict[str, float]:
        train, test = inputs.frozen()
        if not self.config.augment:
            return self.evaluate(train, test)
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        images = inputs.data.train_images[inputs.train_index.to(inputs.data.train_images.device)]
        generator = torch.Generator(device=images.device).manual_seed(self.config.seed + 1)

        def epoch_features(epoch: int) -> Tensor:
            out = []
            for start in range(0, images.shape[0], inputs.batch_size):
                x = images[start:start + inputs.batch_size].float() / 255.0
                x = random_resized_crop_flip(x, generator, scale=self.config.crop_scale)
                out.append(inputs.features(x))
            return torch.cat(out).to(train.x.device)

        probe = fit_linear_classifier(train, num_classes, self.config, epoch_features)
        return topk_accuracies(probe.scores(test.x), test.y, self.key)
