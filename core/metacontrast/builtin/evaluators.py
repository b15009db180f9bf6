"""The weighted kNN evaluator on frozen features."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.builtin.linear_probe import topk_accuracies
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
    """Top-1 (and, above 5 classes, top-5) accuracy of the weighted kNN classifier on the
    test features."""

    NAME = "knn"
    Config = KNNConfig

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        scores = knn_predict(train.x, train.y, test.x, k=self.config.k,
                             temperature=self.config.temperature, num_classes=num_classes,
                             chunk=self.config.chunk)
        return topk_accuracies(scores, test.y, "knn")


