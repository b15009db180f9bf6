"""Transfer evaluation: the pre-trained encoder on another labelled dataset, by a linear
probe on frozen features or by fine-tuning, with hyperparameters chosen on a validation
split of the target's train split (SimCLR section 6 after Kornblith et al., 2019; Ni et
al. appendix A.2).

Protocol: the target train split is shuffled with the seed and cut into train' and
validation (``val_fraction``); every grid point is fitted on train' and scored on
validation; the best one (ties: the first in grid order) is refitted on the whole train
split and scored once on the test split, which nothing else reads. Target images are
converted to the pre-training images' channels (grey <-> RGB) and size, and normalised
with the pre-training statistics the encoder was trained on.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from metacontrast.builtin.finetune import FineTuneSchedule, fine_tune, predict
from metacontrast.classifiers import LinearProbeConfig, fit_linear_classifier, topk_accuracies
from metacontrast.config import DataConfig
from metacontrast.evaluation import extract_features
from metacontrast.interfaces import BuildContext, Evaluator
from metacontrast.records import EvalInputs, Features

PROTOCOLS = ("linear", "finetune")
LUMA = (0.299, 0.587, 0.114)


def adapt_images(images: Tensor, channels: int, size: int) -> Tensor:
    """uint8 ``(N, C, H, W)`` -> uint8 ``(N, channels, size, size)``: grey repeated to RGB,
    RGB to grey by ITU-R 601 luma, resized bilinearly (area when shrinking)."""
    x = images.float()
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor(LUMA, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    if x.shape[-1] != size or x.shape[-2] != size:
        mode = "bilinear" if size > x.shape[-1] else "area"
        x = F.interpolate(x, size=(size, size), mode=mode)
    return x.round().clamp(0, 255).to(torch.uint8)


def split_train_validation(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint ``(train', validation)`` indices covering ``range(n)``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * n))
    return order[n_val:].sort().values, order[:n_val].sort().values


@attrs.define
class TransferConfig:
    """``data``: the target dataset, keys of the ``data`` section (``name``, ``root``,
    ``train_subset``, ``test_subset``, ...). ``protocol``: linear (L-BFGS logistic
    regression on frozen features, grid over ``weight_decays``) | finetune (the whole
    encoder, grid over ``lrs`` x ``weight_decays``; SGD Nesterov with ``epochs``,
    ``batch_size``, ``momentum``, ``schedule``, crop + flip, ``max_steps`` > 0 caps
    each fit). ``val_fraction`` of the target train split selects the grid point.
    ``seed``: null = the run's seed."""

    data: dict[str, Any] = attrs.field(factory=lambda: {"name": "fashionmnist"})
    protocol: str = "linear"
    weight_decays: list[float] = attrs.field(factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    lrs: list[float] = attrs.field(factory=lambda: [0.01, 0.03, 0.1])
    max_iter: int = 200
    epochs: int = 20
    batch_size: int = 256
    momentum: float = 0.9
    schedule: str = "cosine"
    max_steps: int = 0
    val_fraction: float = 0.2
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: unknown {self.protocol!r}; available: {', '.join(PROTOCOLS)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if not self.weight_decays or (self.protocol == "finetune" and not self.lrs):
            raise ValueError("weight_decays (and lrs for finetune) need at least one value")
        if "name" not in self.data:
            raise ValueError("data.name: the target dataset must be named (e.g. data: {name: fashionmnist})")

    def data_config(self) -> Any:
        """The target ``data`` section, checked against the ``data`` schema."""
        try:
            return OmegaConf.merge(OmegaConf.structured(DataConfig), self.data)
        except Exception as err:
            raise ValueError(f"data: {str(err).splitlines()[0]}") from None

    def grid(self) -> list[dict[str, float]]:
        if self.protocol == "linear":
            return [{"weight_decay": wd} for wd in self.weight_decays]
        return [{"lr": lr, "weight_decay": wd} for lr, wd in itertools.product(self.lrs, self.weight_decays)]


class TransferEvaluator(Evaluator):
    """``<key>_<dataset>_top1``/``_top5`` on the target's test split, the chosen
    hyperparameters and every validation score in ``results.json``'s details."""

    NAME = "transfer"
    Config = TransferConfig
    MODALITIES = ("image",)
    NEEDS_ENCODER = True
    PERIODIC = False

    def __init__(self, config: TransferConfig, context: BuildContext | None) -> None:
        super().__init__(config, context)
        from metacontrast.data import DatasetError, load_dataset

        try:
            target = load_dataset(config.data_config())
        except DatasetError as err:
            raise ValueError(f"data: {err}") from None
        channels = context.in_channels if context is not None else target.channels
        size = context.image_size if context is not None else target.image_size
        self.target = attrs.evolve(target, train_images=adapt_images(target.train_images, channels, size),
                                   test_images=adapt_images(target.test_images, channels, size))

    def run(self, inputs: EvalInputs) -> dict[str, float]:
        c: TransferConfig = self.config
        seed = inputs.seed if c.seed is None else c.seed
        device = inputs.data.train_images.device
        target = self.target.to(device)
        mean, std = inputs.data.mean, inputs.data.std  # what the encoder was trained on
        num_classes = int(max(target.train_labels.max(), target.test_labels.max())) + 1
        fit_rows, val_rows = split_train_validation(target.train_labels.numel(), c.val_fraction, seed)
        fit_rows, val_rows = fit_rows.to(device), val_rows.to(device)

        def features(images: Tensor) -> Tensor:
            return extract_features(inputs.encoder, images, mean=mean, std=std, batch_size=inputs.batch_size,
                                    autocast=inputs.autocast, channels_last=inputs.channels_last)

        if c.protocol == "linear":
            train_x, test_x = features(target.train_images), features(target.test_images)
            train_y = target.train_labels

            def fit_and_score(point: dict[str, float], rows: Tensor | None, evaluate_on: str) -> Tensor:
                probe_cfg = LinearProbeConfig(weight_decay=point["weight_decay"], max_iter=c.max_iter)
                chosen = slice(None) if rows is None else rows
                probe = fit_linear_classifier(Features(train_x[chosen], train_y[chosen]), num_classes,
                                              probe_cfg)
                return probe.scores(train_x[val_rows] if evaluate_on == "val" else test_x)
        else:
            def fit_and_score(point: dict[str, float], rows: Tensor | None, evaluate_on: str) -> Tensor:
                chosen = slice(None) if rows is None else rows
                schedule = FineTuneSchedule(epochs=c.epochs, batch_size=c.batch_size, lr=point["lr"],
                                            momentum=c.momentum, weight_decay=point["weight_decay"],
                                            schedule=c.schedule, max_steps=c.max_steps)
                generator = torch.Generator(device=device).manual_seed(seed)
                model = fine_tune(inputs.encoder, target.train_images[chosen], target.train_labels[chosen],
                                  num_classes, mean=mean, std=std, schedule=schedule, generator=generator,
                                  autocast=inputs.autocast, channels_last=inputs.channels_last)
                images = target.train_images[val_rows] if evaluate_on == "val" else target.test_images
                return predict(model, images, mean=mean, std=std, batch_size=inputs.batch_size,
                               autocast=inputs.autocast, channels_last=inputs.channels_last)

        val_y = target.train_labels[val_rows]
        scores = []
        for point in c.grid():
            acc = (fit_and_score(point, fit_rows, "val").argmax(1) == val_y).float().mean().item()
            scores.append({**point, "val_top1": acc})
        best = max(range(len(scores)), key=lambda i: (scores[i]["val_top1"], -i))
        chosen_point = {k: v for k, v in scores[best].items() if k != "val_top1"}
        test_scores = fit_and_score(chosen_point, None, "test")
        prefix = f"{self.key}_{target.name}"
        inputs.details[prefix] = {"protocol": c.protocol, "chosen": chosen_point, "grid": scores,
                                  "train_images": int(target.train_labels.numel()),
                                  "validation_images": int(val_rows.numel()),
                                  "test_images": int(target.test_labels.numel())}
        return topk_accuracies(test_scores, target.test_labels, prefix)
