"""Semi-supervised evaluation with a few labelled rows (Ni et al. 2022, appendix A.5).

For each of ``splits`` seeded draws, ``labelled`` rows of the **train split** get their
labels; a head is fitted on them (on the frozen encoder, or fine-tuning a copy of it
with a linear layer) and scored on the whole **test split**: AUROC for a binary label,
accuracy otherwise. The metrics are the mean and the standard deviation over the draws.

No row of the test split is ever labelled or fitted on: labelled rows are indices into
the train split, and the table's encoding was fitted on the train split alone
(``metacontrast.data.tables``).
"""

from __future__ import annotations

import copy

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacontrast.classifiers import LinearProbeConfig, fit_linear_classifier
from metacontrast.interfaces import Evaluator
from metacontrast.records import EvalInputs, Features

MODES = ("finetune", "frozen")
METRICS = ("auto", "auroc", "accuracy")


def labelled_rows(labels: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices of ``n`` rows of ``labels (N,)``, drawn by a generator seeded with
    ``seed``: one row of every class first (when ``n`` allows), the rest uniformly from
    the remaining rows."""
    labels = labels.cpu()
    if not 0 < n <= labels.numel():
        raise ValueError(f"labelled: must be in [1, {labels.numel()}] (the train split's rows), got {n}")
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    first = torch.zeros(labels.numel(), dtype=torch.bool)
    seen: set[int] = set()
    for i in order.tolist():
        c = int(labels[i])
        if c not in seen and len(seen) < n:
            seen.add(c)
            first[i] = True
    rest = order[~first[order]][: n - int(first.sum())]
    return torch.cat([first.nonzero().flatten(), rest]).sort().values


def auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of ``scores (N,)`` for the bool ``positive (N,)``: the
    Mann-Whitney statistic from average ranks (a tie counts one half)."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc: the test split needs rows of both classes")
    _, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # 1-based rank of each distinct value's last row
    average_rank = last - (counts.double() - 1) / 2
    ranks = average_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def score(logits: Tensor, y: Tensor, metric: str) -> float:
    """AUROC of class 1's probability, or accuracy, of ``logits (N, C)``."""
    if metric == "auroc":
        return auroc(logits.float().softmax(dim=1)[:, 1].cpu(), (y == 1).cpu())
    return float((logits.argmax(dim=1) == y).float().mean())


@attrs.define
class FewLabelsConfig:
    """``labelled`` rows per draw, ``splits`` draws. ``mode``: finetune (a copy of the
    encoder plus a linear layer, AdamW with ``lr``/``weight_decay`` for ``steps``
    full-batch steps) | frozen (multinomial logistic regression on the frozen features,
    L2 ``probe_weight_decay``). ``metric``: auto (AUROC for two classes, accuracy
    otherwise) | auroc | accuracy. ``seed``: null = the run's seed."""

    labelled: int = 50
    splits: int = 5
    mode: str = "finetune"
    metric: str = "auto"
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-2
    probe_weight_decay: float = 1e-2
    seed: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown {self.mode!r}; available: {', '.join(MODES)}")
        if self.metric not in METRICS:
            raise ValueError(f"metric: unknown {self.metric!r}; available: {', '.join(METRICS)}")
        if self.labelled < 1 or self.splits < 1 or self.steps < 1 or self.lr <= 0:
            raise ValueError("labelled, splits and steps must be >= 1 and lr > 0")


class FewLabelsEvaluator(Evaluator):
    """``<key>_<metric>`` (mean over the draws) and ``<key>_<metric>_std`` (population
    standard deviation), e.g. ``few_labels_auroc``. Without an encoder (the raw-feature
    baseline) the frozen protocol runs on the encoded rows."""

    NAME = "few_labels"
    Config = FewLabelsConfig
    MODALITIES = ("table",)
    PERIODIC = False

    def run(self, inputs: EvalInputs) -> dict[str, float]:
        c: FewLabelsConfig = self.config
        data = inputs.data
        num_classes = int(data.num_classes)
        metric = c.metric if c.metric != "auto" else ("auroc" if num_classes == 2 else "accuracy")
        if metric == "auroc" and num_classes != 2:
            raise ValueError(f"eval.{self.key}.metric: auroc needs a binary label, {data.name} has "
                             f"{num_classes} classes")
        seed = inputs.seed if c.seed is None else c.seed
        frozen = c.mode == "frozen" or inputs.encoder is None
        test_y = data.test_labels
        values, draws = [], []
        for s in range(c.splits):
            rows = labelled_rows(data.train_labels, c.labelled, seed * 1_000_003 + s)
            x = data.train_x[rows.to(data.train_x.device)]
            y = data.train_labels[rows.to(data.train_labels.device)]
            if frozen:
                logits = self._frozen_logits(inputs, x, y, num_classes)
            else:
                logits = self._finetuned_logits(inputs, x, y, num_classes, seed * 1_000_003 + s)
            values.append(score(logits, test_y.to(logits.device), metric))
            draws.append({"rows": rows.tolist(), metric: values[-1]})
        t = torch.tensor(values, dtype=torch.float64)
        inputs.details[self.key] = {"mode": "frozen" if frozen else "finetune", "metric": metric,
                                    "labelled": c.labelled, "draws": draws}
        return {f"{self.key}_{metric}": float(t.mean()),
                f"{self.key}_{metric}_std": float(t.std(unbiased=False))}

    def _frozen_logits(self, inputs: EvalInputs, x: Tensor, y: Tensor, num_classes: int) -> Tensor:
        probe_config = LinearProbeConfig(weight_decay=self.config.probe_weight_decay)
        probe = fit_linear_classifier(Features(inputs.features(x), y), num_classes, probe_config)
        _, test = inputs.frozen()
        return probe.scores(test.x)

    def _finetuned_logits(self, inputs: EvalInputs, x: Tensor, y: Tensor, num_classes: int,
                          seed: int) -> Tensor:
        c: FewLabelsConfig = self.config
        torch.manual_seed(seed)  # the new layer's initial weights and dropout
        encoder = copy.deepcopy(inputs.encoder).train()
        dim = int(encoder.out_dim)
        model = nn.Sequential(encoder, nn.Linear(dim, num_classes)).to(x.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        for _ in range(c.steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return predict(model, inputs.data.test_x, inputs.batch_size)


@torch.no_grad()
def predict(model: nn.Module, rows: Tensor, batch_size: int) -> Tensor:
    """Logits ``(N, C)`` of ``rows (N, F)`` with ``model`` in eval mode."""
    model.eval()
    return torch.cat([model(rows[i:i + batch_size]).float() for i in range(0, rows.shape[0], batch_size)])
