"""Weighted cosine kNN evaluation with faiss search instead of a brute-force matmul."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

from metacontrast.classifiers import KNNConfig, knn_bank_problem, knn_votes, topk_accuracies
from metacontrast.interfaces import Evaluator
from metacontrast.records import Features
from metacontrast_faiss.index import IndexConfig, NeighbourIndex


@attrs.define
class FaissKNNConfig(KNNConfig):
    """The kNN protocol of ``eval=[knn]`` (k, temperature, vote) with a faiss ``index``; the
    exact ``flat`` index gives the brute-force top-k. ``chunk``: queries searched at once."""

    chunk: int = 8192
    index: IndexConfig = attrs.field(factory=IndexConfig)


class FaissKNNEvaluator(Evaluator):
    """Top-1/top-5 of the weighted kNN classifier, neighbours found by faiss:
    ``knn_faiss_top1``, ``knn_faiss_top5`` (the protocol of ``knn``, named apart so both
    can run side by side)."""

    NAME = "knn_faiss"
    Config = FaissKNNConfig

    def bank_problem(self, bank_size: int) -> str | None:
        return knn_bank_problem(self.config.k, bank_size)

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        bank = F.normalize(train.x.float(), dim=1)
        index = NeighbourIndex(bank.shape[1], self.config.index, device=bank.device).add(bank)
        scores = []
        for start in range(0, test.x.shape[0], self.config.chunk):
            q = F.normalize(test.x[start:start + self.config.chunk].float(), dim=1)
            sim, idx = index.search(q, self.config.k)
            scores.append(knn_votes(sim, idx, train.y.to(idx.device), temperature=self.config.temperature,
                                    num_classes=num_classes, vote=self.config.vote))
        return topk_accuracies(torch.cat(scores), test.y.to(scores[0].device), self.key)
