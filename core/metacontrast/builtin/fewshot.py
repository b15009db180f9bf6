"""N-way K-shot evaluation on frozen features: episodes drawn from a labelled split,
a classifier fitted on each episode's support, accuracy on its queries, reported as the
mean over episodes with a 95% confidence interval (1.96 standard errors)."""

from __future__ import annotations

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.closed_forms import ridge_weights
from metacontrast.interfaces import Evaluator
from metacontrast.records import Features

CLASSIFIERS = ("protonet", "ridge", "logistic")


@attrs.define
class FewShotConfig:
    """``ways`` classes per episode, each with ``shots`` support and ``queries`` query
    samples (one result per entry of ``shots``); ``episodes`` (>= 600 for the usual
    confidence interval). ``classifier``: protonet (nearest prototype of L2-normalised
    features) | ridge (closed form, ``lam``) | logistic (scikit-learn, L2-normalised).
    ``split``: test (classes of the test split, e.g. held-out Omniglot alphabets) | train."""

    ways: int = 5
    shots: list[int] = attrs.field(factory=lambda: [1, 5])
    queries: int = 15
    episodes: int = 600
    classifier: str = "protonet"
    lam: float = 1.0
    split: str = "test"
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.ways < 2 or self.queries < 1 or self.episodes < 1 or not self.shots or min(self.shots) < 1:
            raise ValueError("eval.few_shot: needs ways >= 2, shots >= 1, queries >= 1, episodes >= 1")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"eval.few_shot.classifier: unknown {self.classifier!r}; available: "
                             f"{', '.join(CLASSIFIERS)}")
        if self.split not in ("test", "train"):
            raise ValueError(f"eval.few_shot.split: test or train, got {self.split!r}")


def sample_episodes(labels: Tensor, ways: int, per_class: int, episodes: int,
                    generator: torch.Generator) -> Tensor:
    """Indices ``(E, ways, per_class)``: for each episode, ``ways`` distinct classes among
    those with at least ``per_class`` samples, and ``per_class`` distinct samples of each."""
    classes, counts = labels.unique(return_counts=True)
    eligible = classes[counts >= per_class]
    if eligible.numel() < ways:
        raise ValueError(f"eval.few_shot: {ways}-way episodes with {per_class} samples a class need "
                         f"{ways} classes that large; the split has {eligible.numel()}")
    members = [(labels == c).nonzero().flatten() for c in eligible.tolist()]
    out = torch.empty(episodes, ways, per_class, dtype=torch.long)
    for e in range(episodes):
        chosen = torch.randperm(eligible.numel(), generator=generator)[:ways]
        for w, c in enumerate(chosen.tolist()):
            pool = members[c]
            out[e, w] = pool[torch.randperm(pool.numel(), generator=generator)[:per_class]]
    return out


def episode_accuracy(x: Tensor, index: Tensor, shots: int, classifier: str, lam: float) -> Tensor:
    """Accuracy of each episode ``(E,)``. ``x (N, D)`` features, ``index (E, ways,
    shots + queries)``: the first ``shots`` of each class are the support."""
    e, ways, per_class = index.shape
    feats = F.normalize(x.float(), dim=-1)[index]  # (E, ways, per_class, D)
    support, query = feats[:, :, :shots], feats[:, :, shots:]
    q = query.reshape(e, -1, feats.shape[-1])  # (E, ways * queries, D)
    truth = torch.arange(ways).repeat_interleave(per_class - shots).expand(e, -1)
    if classifier == "protonet":
        protos = support.mean(dim=2)  # (E, ways, D)
        scores = -torch.cdist(q, protos).pow(2)
    elif classifier == "ridge":
        xs = support.reshape(e, ways * shots, -1)
        ys = torch.eye(ways).repeat_interleave(shots, dim=0).expand(e, -1, -1)
        scores = q @ ridge_weights(xs.double(), ys.double(), lam).float()
    else:
        from sklearn.linear_model import LogisticRegression

        ys = np.repeat(np.arange(ways), shots)
        preds = []
        for i in range(e):
            model = LogisticRegression(max_iter=1000).fit(support[i].reshape(ways * shots, -1).numpy(), ys)
            preds.append(torch.from_numpy(model.predict_proba(q[i].numpy())))
        scores = torch.stack(preds)
    return (scores.argmax(dim=-1) == truth).float().mean(dim=1)


class FewShotEvaluator(Evaluator):
    """``fewshot_<ways>w<shots>s`` (mean accuracy) and ``..._ci95`` for every shot count."""

    NAME = "few_shot"
    Config = FewShotConfig

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:
        c: FewShotConfig = self.config
        split = test if c.split == "test" else train
        x, y = split.x.cpu(), split.y.cpu()
        out: dict[str, float] = {}
        for shots in c.shots:
            g = torch.Generator().manual_seed(c.seed * 1000 + shots)
            index = sample_episodes(y, c.ways, shots + c.queries, c.episodes, g)
            acc = episode_accuracy(x, index, shots, c.classifier, c.lam)
            key = f"fewshot_{c.ways}w{shots}s"
            out[key] = float(acc.mean())
            spread = float(acc.std(unbiased=True)) if acc.numel() > 1 else 0.0
            out[f"{key}_ci95"] = 1.96 * spread / acc.numel() ** 0.5
        return out
