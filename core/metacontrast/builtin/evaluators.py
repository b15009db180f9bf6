"""The weighted kNN evaluator on frozen features."""

from __future__ import annotations

from metacontrast.classifiers import KNNConfig, knn_predict, topk_accuracies
from metacontrast.interfaces import Evaluator
from metacontrast.records import Features


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


