"""Semi-supervised evaluation: fine-tune the whole pre-trained encoder (plus a linear
layer) on a class-balanced fraction of the train split's labels, report top-1/top-5 on
the test split (SimCLR section 6; Ni et al. appendix A.2).

The labelled subset is drawn from the train split only, reproducibly from the seed, with
the same number of images in every class (``round(fraction * N_train / classes)``, at
least 1, at most the class's size), and saved under ``<run_dir>/labelled_subsets/`` so a
later run or another library can use the same images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from metacontrast.builtin.finetune import FineTuneSchedule, fine_tune, predict
from metacontrast.classifiers import topk_accuracies
from metacontrast.interfaces import Evaluator
from metacontrast.records import EvalInputs


def per_class_count(num_train: int, num_classes: int, fraction: float) -> int:
    """Images per class of a class-balanced ``fraction`` of ``num_train`` images."""
    return max(1, round(fraction * num_train / num_classes))


def balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices into ``labels (N,)``: ``per_class_count`` images of every class,
    each class's drawn uniformly without replacement by a generator seeded from ``seed``
    and ``fraction`` (so the 1% subset is not a prefix of the 10% one)."""
    labels = labels.cpu()
    classes = labels.unique()
    k = per_class_count(labels.numel(), classes.numel(), fraction)
    g = torch.Generator().manual_seed(seed * 1_000_003 + round(fraction * 1e6))
    chosen = []
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def fraction_name(fraction: float) -> str:
    """0.01 -> ``1pct``, 0.1 -> ``10pct``, 0.005 -> ``0.5pct``."""
    pct = fraction * 100
    return f"{pct:g}pct"


def save_subset(path: Path, index: Tensor, *, dataset: str, fraction: float, seed: int) -> None:
    """Write the subset as JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"dataset": dataset, "split": "train", "fraction": fraction, "seed": seed,
                               "indices": index.tolist()}) + "\n")
    os.replace(tmp, path)


@attrs.define
class SemiSupervisedConfig:
    """``fractions`` of the train labels (one fine-tuning each), with ``epochs`` per
    fraction (one value for all, or one per fraction); the schedule of Ni et al.: SGD
    momentum 0.9 (``nesterov``), batch 256, ``lr`` 0.05 (times batch / 256) decayed
    linearly, no ``weight_decay``, crop + flip (``augment``, ``crop_scale``);
    ``max_steps`` > 0 caps each fine-tuning. ``seed``: null = the run's seed."""

    fractions: list[float] = attrs.field(factory=lambda: [0.01, 0.1])
    epochs: list[int] = attrs.field(factory=lambda: [60])
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: str = "linear"
    augment: bool = True
    crop_scale: list[float] = attrs.field(factory=lambda: [0.08, 1.0])
    max_steps: int = 0
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions: need values in (0, 1], got {self.fractions}")
        if len(self.epochs) not in (1, len(self.fractions)):
            raise ValueError(f"epochs: one value or one per fraction ({len(self.fractions)}), got "
                             f"{self.epochs}")
        for e in self.epochs:
            self.schedule_for(e)  # validates the rest

    def schedule_for(self, epochs: int) -> FineTuneSchedule:
        return FineTuneSchedule(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                                momentum=self.momentum, nesterov=self.nesterov,
                                weight_decay=self.weight_decay, schedule=self.schedule,
                                augment=self.augment, crop_scale=tuple(self.crop_scale),
                                max_steps=self.max_steps)


class SemiSupervisedEvaluator(Evaluator):
    """``<key>_<p>pct_top1``/``_top5`` for every fraction (``semi_supervised_1pct_top1``)."""

    NAME = "semi_supervised"
    Config = SemiSupervisedConfig
    MODALITIES = ("image",)
    NEEDS_ENCODER = True
    PERIODIC = False

    def run(self, inputs: EvalInputs) -> dict[str, float]:
        c: SemiSupervisedConfig = self.config
        data = inputs.data
        seed = inputs.seed if c.seed is None else c.seed
        num_classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
        out: dict[str, float] = {}
        details: dict[str, Any] = {}
        for i, fraction in enumerate(c.fractions):
            epochs = c.epochs[i] if len(c.epochs) > 1 else c.epochs[0]
            index = balanced_subset(data.train_labels, fraction, seed)
            name = fraction_name(fraction)
            entry: dict[str, Any] = {"images": int(index.numel()),
                                     "per_class": per_class_count(data.train_labels.numel(),
                                                                  int(data.train_labels.unique().numel()),
                                                                  fraction),
                                     "epochs": epochs}
            if inputs.run_dir is not None:
                path = Path(inputs.run_dir) / "labelled_subsets" / f"{self.key}_{name}_seed{seed}.json"
                save_subset(path, index, dataset=data.name, fraction=fraction, seed=seed)
                entry["subset_file"] = str(path)
            rows = index.to(data.train_images.device)
            generator = torch.Generator(device=data.train_images.device).manual_seed(seed + i)
            model = fine_tune(inputs.encoder, data.train_images[rows], data.train_labels[rows], num_classes,
                              mean=data.mean, std=data.std, schedule=c.schedule_for(epochs),
                              generator=generator, autocast=inputs.autocast,
                              channels_last=inputs.channels_last)
            scores = predict(model, data.test_images, mean=data.mean, std=data.std,
                             batch_size=inputs.batch_size, autocast=inputs.autocast,
                             channels_last=inputs.channels_last)
            out.update(topk_accuracies(scores, data.test_labels, f"{self.key}_{name}"))
            details[name] = entry
        inputs.details[self.key] = details
        return out
