"""The cosine kNN evaluator on frozen features (weighted or majority vote)."""

from __future__ import annotations

from metacontrast.classifiers import KNNConfig, knn_bank_problem, knn_predict, topk_accuracies
from metacontrast.interfaces import Evaluator
from metacontrast.records import Features


class KNNEvaluator(Evaluator):
    """Top-1 (and, above 5 classes, top-5) accuracy of the cosine kNN classifier on the
    test features, named after the config key (``eval.knn`` -> ``knn_top1``,
    ``eval.knn_majority`` -> ``knn_majority_top1``), so that both votes run side by side."""

    NAME = "knn"
    Config = KNNConfig

    def bank_problem(self, bank_size: int) -> str | None:
        return knn_bank_problem(self.config.k, bank_size)

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:
        num_classes = int(max(train.y.max(), test.y.max())) + 1
        scores = knn_predict(train.x, train.y, test.x, k=self.config.k,
                             temperature=self.config.temperature, num_classes=num_classes,
                             chunk=self.config.chunk, vote=self.config.vote)
        return topk_accuracies(scores, test.y, self.key)


