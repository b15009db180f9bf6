"""Built-in evaluators on frozen features: weighted kNN and a linear probe."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.interfaces import Evaluator
from metacontrast.records import Features


@attrs.define
class KNNConfig:
    """``k`` neighbours, vote weights ``exp(cos / temperature)`` (InstDisc's weighted
    kNN); ``chunk``: test rows scored at once (bounds memory at ``chunk * N_train``)."""

    k: int = 200
    temperature: float = 0.1
    chunk: int = 1024

    def __attrs_post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"eval.knn.k must be >= 1, got {self.k}")
        if self.temperature <= 0:
            raise ValueError(f"eval.knn.temperature must be > 0, got {self.temperature}")


def knn_votes(sim: Tensor, idx: Tensor, train_y: Tensor, *, temperature: float,
              num_classes: int) -> Tensor:
    """Class scores ``(T, num_classes)`` from the cosine similarities ``sim (T, k)`` of each
    test row's k nearest train rows ``idx (T, k)``: the per-class sum of
    ``exp(cos / temperature)`` (InstDisc's weighted vote)."""
    votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float32, device=sim.device)
    return votes.scatter_add_(1, train_y[idx], (sim.float() / temperature).exp())


def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, *, k: int,
                temperature: float, num_classes: int, chunk: int = 1024) -> Tensor:
    """Weighted cosine kNN by brute force. ``train_x (N, D)``, ``train_y (N,)``,
    ``test_x (T, D)`` -> class scores ``(T, num_classes)`` (see ``knn_votes``)."""
    bank = F.normalize(train_x.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        out.append(knn_votes(sim, idx, train_y, temperature=temperature, num_classes=num_classes))
    return torch.cat(out)


class KNNEvaluator(Evaluator):
    """Top-1 and top-5 accuracy of the weighted kNN classifier on the test features."""

    NAME = "knn"
    Config = KNNConfig

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        scores = knn_predict(train.x, train.y, test.x, k=self.config.k,
                             temperature=self.config.temperature, num_classes=num_classes,
                             chunk=self.config.chunk)
        return _accuracies(scores, test.y, "knn")


@attrs.define
class LinearProbeConfig:
    """Multinomial logistic regression on standardised frozen features, fitted by
    full-batch L-BFGS: ``weight_decay`` (L2 on the weights), ``max_iter`` iterations."""

    weight_decay: float = 1e-4
    max_iter: int = 200

    def __attrs_post_init__(self) -> None:
        if self.weight_decay < 0:
            raise ValueError(f"eval.linear.weight_decay must be >= 0, got {self.weight_decay}")


def fit_linear_probe(x: Tensor, y: Tensor, num_classes: int, *, weight_decay: float,
                     max_iter: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fit ``softmax(W x' + b)`` on standardised ``x' = (x - mu) / sd``. ``x (N, D)``,
    ``y (N,)``. Returns ``(W (num_classes, D), b (num_classes,), mu (D,), sd (D,))``."""
    x = x.float()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mu, sd


class LinearProbeEvaluator(Evaluator):
    """Top-1/top-5 of a linear classifier trained on frozen train features."""

    NAME = "linear"
    Config = LinearProbeConfig

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        w, b, mu, sd = fit_linear_probe(train.x.cpu(), train.y.cpu(), num_classes,
                                        weight_decay=self.config.weight_decay,
                                        max_iter=self.config.max_iter)
        scores = ((test.x.cpu().float() - mu) / sd) @ w.T + b
        return _accuracies(scores, test.y.cpu(), "linear")


def _accuracies(scores: Tensor, y: Tensor, prefix: str) -> dict[str, float]:
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hit = top == y.view(-1, 1)
    return {f"{prefix}_top1": hit[:, 0].float().mean().item(),
            f"{prefix}_top{k}": hit.any(dim=1).float().mean().item()}


