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

import math
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.imageops import random_resized_crop_flip
from metacontrast.interfaces import BuildContext, Evaluator
from metacontrast.records import EvalInputs, Features

SOLVERS = ("lbfgs", "sgd", "closed_form")
LOSSES = ("logistic", "squared")
SCHEDULES = ("cosine", "linear", "constant")


@attrs.define
class LinearProbeConfig:
    """``solver``: lbfgs | sgd | closed_form; ``loss``: logistic | squared;
    ``weight_decay``: L2 on W (0 in SimCLR's protocol). lbfgs: ``max_iter``. sgd:
    ``epochs``, ``batch_size`` (capped at the train rows), ``lr`` (multiplied by
    ``batch_size / 256``), ``momentum``, ``nesterov``, ``schedule`` (cosine | linear |
    constant), ``augment`` (random resized crop with area in ``crop_scale`` + flip, the
    features re-extracted every epoch). ``standardize``: scale features to zero mean and
    unit variance first. ``seed``: minibatch order and augmentation."""

    solver: str = "lbfgs"
    loss: str = "logistic"
    weight_decay: float = 1e-4
    max_iter: int = 200
    epochs: int = 90
    batch_size: int = 4096
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    augment: bool = False
    crop_scale: list[float] = attrs.field(factory=lambda: [0.08, 1.0])
    standardize: bool = True
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        for key, value, allowed in (("solver", self.solver, SOLVERS), ("loss", self.loss, LOSSES),
                                    ("schedule", self.schedule, SCHEDULES)):
            if value not in allowed:
                raise ValueError(f"{key}: unknown {value!r}; available: {', '.join(allowed)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.solver == "closed_form" and self.loss != "squared":
            raise ValueError("solver: closed_form solves the squared loss only; set loss=squared "
                             "or solver=lbfgs")
        if self.augment and self.solver != "sgd":
            raise ValueError("augment: augmented images are re-encoded every epoch, which needs "
                             "solver=sgd")
        if self.epochs < 1 or self.batch_size < 1 or self.max_iter < 1 or self.lr <= 0:
            raise ValueError("epochs, batch_size, max_iter must be >= 1 and lr > 0")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale: need [low, high] with 0 < low <= high <= 1, got "
                             f"{self.crop_scale}")


@attrs.frozen(eq=False)
class LinearClassifier:
    """``scores(x) = W (x - mu) / sd + b``: ``w (C, D)``, ``b (C,)``, ``mu``/``sd (D,)``."""

    w: Tensor
    b: Tensor
    mu: Tensor
    sd: Tensor

    def scores(self, x: Tensor) -> Tensor:
        """``x (N, D)`` -> ``(N, C)``."""
        return ((x.float() - self.mu) / self.sd) @ self.w.T + self.b


def standardizer(x: Tensor, on: bool) -> tuple[Tensor, Tensor]:
    """``(mu (D,), sd (D,))`` of ``x (N, D)``; identity statistics when ``on`` is false."""
    x = x.float()
    if not on:
        return torch.zeros(x.shape[1], device=x.device), torch.ones(x.shape[1], device=x.device)
    return x.mean(0), x.std(0).clamp_min(1e-6)


def probe_objective(scores: Tensor, y: Tensor, w: Tensor, *, loss: str, weight_decay: float) -> Tensor:
    """J of the module docstring for ``scores (N, C)``, labels ``y (N,)``, weights ``w``."""
    if loss == "logistic":
        data = F.cross_entropy(scores, y)
    else:
        data = 0.5 * (scores - F.one_hot(y, scores.shape[1]).to(scores.dtype)).pow(2).sum(1).mean()
    return data + 0.5 * weight_decay * (w * w).sum()


def fit_lbfgs(xs: Tensor, y: Tensor, num_classes: int, *, loss: str, weight_decay: float,
              max_iter: int) -> tuple[Tensor, Tensor]:
    """Full-batch L-BFGS (strong Wolfe line search) on standardised ``xs (N, D)``."""
    w = torch.zeros(num_classes, xs.shape[1], dtype=xs.dtype, device=xs.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=xs.dtype, device=xs.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = probe_objective(xs @ w.T + b, y, w, loss=loss, weight_decay=weight_decay)
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def fit_closed_form(xs: Tensor, y: Tensor, num_classes: int, *, weight_decay: float
                    ) -> tuple[Tensor, Tensor]:
    """The exact minimiser of J with the squared loss, in float64:
    ``W^T = (Xc^T Xc / N + weight_decay I)^-1 Xc^T Yc / N``, ``b = mean(Y) - W mean(X)``
    (``Xc``, ``Yc``: centred features and one-hot labels)."""
    x = xs.double()
    t = F.one_hot(y, num_classes).double()
    n, d = x.shape
    x_mean, t_mean = x.mean(0), t.mean(0)
    xc, tc = x - x_mean, t - t_mean
    gram = xc.T @ xc / n + weight_decay * torch.eye(d, dtype=x.dtype, device=x.device)
    # without a ridge the system may be singular: the least-squares solution then
    wt = torch.linalg.solve(gram, xc.T @ tc / n) if weight_decay > 0 else torch.linalg.lstsq(xc, tc).solution
    b = t_mean - x_mean @ wt
    return wt.T.to(xs.dtype), b.to(xs.dtype)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total``."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if schedule == "linear":
        return 1 - step / total
    return 1.0


def fit_sgd(epoch_features: Callable[[int], Tensor], y: Tensor, num_classes: int, dim: int,
            config: LinearProbeConfig) -> tuple[Tensor, Tensor]:
    """Minibatch SGD on J. ``epoch_features(epoch) -> (N, D)`` gives the standardised train
    features of an epoch (the same tensor without augmentation). The learning rate is
    ``lr * batch / 256`` decayed per step by ``schedule``."""
    n = y.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = steps_per_epoch * config.epochs
    base_lr = config.lr * batch / 256
    device = y.device
    w = torch.zeros(num_classes, dim, device=device, requires_grad=True)
    b = torch.zeros(num_classes, device=device, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=base_lr, momentum=config.momentum,
                          nesterov=config.nesterov and config.momentum > 0)
    g = torch.Generator().manual_seed(config.seed)
    step = 0
    with torch.enable_grad():
        for epoch in range(config.epochs):
            xs = epoch_features(epoch)
            order = torch.randperm(n, generator=g).to(device)
            for start in range(0, n, batch):
                rows = order[start:start + batch]
                for group in opt.param_groups:
                    group["lr"] = base_lr * lr_factor(config.schedule, step, total)
                opt.zero_grad(set_to_none=True)
                value = probe_objective(xs[rows] @ w.T + b, y[rows], w, loss=config.loss,
                                        weight_decay=config.weight_decay)
                value.backward()
                opt.step()
                step += 1
    return w.detach(), b.detach()


def fit_linear_classifier(train: Features, num_classes: int, config: LinearProbeConfig,
                          epoch_features: Callable[[int], Tensor] | None = None) -> LinearClassifier:
    """Fit the probe on ``train`` (``x (N, D)``, ``y (N,)``) with ``config.solver``.
    ``epoch_features(epoch) -> (N, D)`` (raw features, sgd only): fresh features per epoch
    (augmentation); standardised with the statistics of ``train.x``."""
    x = train.x.float()
    y = train.y.to(x.device)
    mu, sd = standardizer(x, config.standardize)
    mu, sd = mu.to(x.device), sd.to(x.device)
    xs = (x - mu) / sd
    if config.solver == "lbfgs":
        w, b = fit_lbfgs(xs, y, num_classes, loss=config.loss, weight_decay=config.weight_decay,
                         max_iter=config.max_iter)
    elif config.solver == "closed_form":
        w, b = fit_closed_form(xs, y, num_classes, weight_decay=config.weight_decay)
    else:
        source = ((lambda e: (epoch_features(e).float() - mu) / sd) if epoch_features is not None
                  else (lambda e: xs))
        w, b = fit_sgd(source, y, num_classes, xs.shape[1], config)
    return LinearClassifier(w=w, b=b, mu=mu, sd=sd)


def topk_accuracies(scores: Tensor, y: Tensor, prefix: str) -> dict[str, float]:
    """``<prefix>_top1``, and ``<prefix>_top5`` when there are more than 5 classes (with 5
    or fewer, top-5 is 100% whatever the scores, so it is not reported).
    ``scores (T, classes)``, ``y (T,)``."""
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hit = top == y.view(-1, 1).to(top.device)
    out = {f"{prefix}_top1": hit[:, 0].float().mean().item()}
    if scores.shape[1] > 5:
        out[f"{prefix}_top5"] = hit.any(dim=1).float().mean().item()
    return out


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
