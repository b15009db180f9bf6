"""Classifiers and metrics on frozen features, shared by every evaluator.

The weighted cosine kNN (``knn_predict``, ``knn_votes``), the linear probes (closed form,
L-BFGS, SGD on features or on augmented images: ``fit_linear_classifier``) and the
accuracies they report (``topk_accuracies``). The built-in evaluators, the faiss kNN and
the tabular protocols all use these; a plugin's evaluator should too, so that its
numbers are computed the way the built-in ones are.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.records import Features

VOTES = ("weighted", "majority")
SOLVERS = ("lbfgs", "sgd", "closed_form")
LOSSES = ("logistic", "squared")
SCHEDULES = ("cosine", "linear", "constant")


def knn_bank_problem(k: int, bank_size: int) -> str | None:
    """``k`` neighbours cannot be found in a bank of ``bank_size`` rows."""
    if k > bank_size:
        return (f"k: {k} neighbours, but the kNN bank holds {bank_size} labelled images; choose k <= "
                f"{bank_size} (or a larger evaluation.train_subset)")
    return None


@attrs.define
class KNNConfig:
    """``k`` nearest train rows by cosine similarity; ``vote``: ``weighted`` (each neighbour
    votes ``exp(cos / temperature)``: InstDisc's protocol, lightly's and MoCo's k = 200,
    t = 0.1) or ``majority`` (one vote each, ties to the lowest class index: scikit-learn's
    ``KNeighborsClassifier(metric="cosine")``, the k = 10 of the public SimCLR CIFAR-10
    reference; ``temperature`` is then unused). ``chunk``: test rows scored at once
    (bounds memory at ``chunk * N_train``)."""

    k: int = 200
    temperature: float = 0.1
    vote: str = "weighted"
    chunk: int = 1024

    def __attrs_post_init__(self) -> None:
        # the builder names the section (eval.knn, eval.knn_majority, ...) before these
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.vote not in VOTES:
            raise ValueError(f"vote: unknown {self.vote!r}; available: {', '.join(VOTES)}")


def knn_votes(sim: Tensor, idx: Tensor, train_y: Tensor, *, temperature: float,
              num_classes: int, vote: str = "weighted") -> Tensor:
    """Class scores ``(T, num_classes)`` from the cosine similarities ``sim (T, k)`` of each
    test row's k nearest train rows ``idx (T, k)``. ``weighted``: the per-class sum of
    ``exp(cos / temperature)`` (InstDisc's vote). ``majority``: the per-class count of
    neighbours, less ``c / (2 C)`` for class ``c`` of ``C`` so that a tie goes to the
    lowest class index (counts are whole numbers: the order between different counts
    stays)."""
    votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float32, device=sim.device)
    if vote == "majority":
        votes.scatter_add_(1, train_y[idx], torch.ones_like(sim, dtype=torch.float32))
        tie_break = torch.arange(num_classes, dtype=torch.float32, device=sim.device) / (2 * num_classes)
        return votes - tie_break
    return votes.scatter_add_(1, train_y[idx], (sim.float() / temperature).exp())


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, *, k: int,
                temperature: float, num_classes: int, chunk: int = 1024,
                vote: str = "weighted") -> Tensor:
    """Cosine kNN by brute force. ``train_x (N, D)``, ``train_y (N,)``, ``test_x (T, D)``
    -> class scores ``(T, num_classes)`` (see ``knn_votes`` for ``vote``)."""
    bank = F.normalize(train_x.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        out.append(knn_votes(sim, idx, train_y, temperature=temperature, num_classes=num_classes, vote=vote))
    return torch.cat(out)


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
