"""The few-label evaluation: its draws, its AUROC, and that no test row is fitted on."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from metacontrast.data import from_frame
from metacontrast.records import EvalInputs
from metacontrast_tabular.few_labels import FewLabelsConfig, FewLabelsEvaluator, auroc, labelled_rows


def test_labelled_rows_cover_every_class_are_reproducible_and_differ_per_seed():
    labels = torch.tensor([0] * 40 + [1] * 5 + [2] * 2)
    a = labelled_rows(labels, 10, seed=3)
    assert torch.equal(a, labelled_rows(labels, 10, seed=3))
    assert not torch.equal(a, labelled_rows(labels, 10, seed=4))
    assert a.numel() == a.unique().numel() == 10 and set(labels[a].tolist()) == {0, 1, 2}
    assert labelled_rows(labels, 2, seed=0).numel() == 2  # fewer rows than classes: still n rows
    with pytest.raises(ValueError, match="labelled: must be in"):
        labelled_rows(labels, 48, seed=0)


def _pairwise_auroc(scores, positive):
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_equals_the_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (50,), generator=g).float()  # many ties
    positive = torch.rand(50, generator=g) < 0.4
    assert auroc(scores, positive) == pytest.approx(_pairwise_auroc(scores.tolist(), positive.tolist()))
    assert auroc(torch.tensor([0.1, 0.9]), torch.tensor([False, True])) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auroc(torch.tensor([0.1, 0.9]), torch.tensor([True, True]))


class RecordingEncoder(nn.Module):
    """A linear encoder; every copy of it records the rows it sees while training in
    the class-wide ``SEEN`` (the evaluator fine-tunes copies)."""

    out_dim = 3
    SEEN: ClassVar[list[torch.Tensor]] = []

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, 3)

    def forward(self, rows):
        if self.training:
            RecordingEncoder.SEEN.append(rows.detach().clone())
        return self.linear(rows.nan_to_num())


def _table():
    g = np.random.default_rng(0)
    x = g.normal(size=(120, 4))
    y = (x[:, 0] + 0.3 * g.normal(size=120) > 0).astype(int)
    return from_frame(pd.DataFrame({**{f"f{i}": x[:, i] for i in range(4)}, "y": y}), label="y")


def _inputs(data, encoder, seed=0):
    features = (lambda r: encoder.eval()(r).detach()) if encoder is not None else data.raw_features
    return EvalInputs(encoder=encoder, data=data, train_index=torch.arange(data.num_train), features=features,
                      seed=seed)


def test_fine_tuning_fits_only_labelled_train_rows():
    data = _table()
    encoder = RecordingEncoder(4).eval()
    RecordingEncoder.SEEN.clear()
    evaluator = FewLabelsEvaluator(FewLabelsConfig(labelled=20, splits=3, steps=100, lr=0.05), None)
    inputs = _inputs(data, encoder)
    out = evaluator.run(inputs)
    assert set(out) == {"few_labels_auroc", "few_labels_auroc_std"} and out["few_labels_auroc"] > 0.8
    assert not encoder.training  # copies were fine-tuned, the encoder was left as it was
    draws = inputs.details["few_labels"]["draws"]
    assert len(draws) == 3 and all(len(d["rows"]) == 20 for d in draws)
    drawn = {tuple(data.train_rows[i].tolist()) for d in draws for i in d["rows"]}
    fitted = {tuple(r.tolist()) for batch in RecordingEncoder.SEEN for r in batch}
    test_rows = {tuple(r.tolist()) for r in data.test_rows}
    assert fitted == drawn and not fitted & test_rows


def test_frozen_mode_and_the_raw_baseline_report_means_and_stds():
    data = _table()
    frozen = FewLabelsEvaluator(FewLabelsConfig(labelled=30, splits=4, mode="frozen"), None)
    raw = frozen.run(_inputs(data, None))
    again = frozen.run(_inputs(data, None))
    assert raw == again and raw["few_labels_auroc"] > 0.8 and raw["few_labels_auroc_std"] >= 0.0
    draws = FewLabelsEvaluator(FewLabelsConfig(labelled=30, splits=4, mode="frozen"), None)
    inputs = _inputs(data, None)
    draws.run(inputs)
    values = torch.tensor([d["auroc"] for d in inputs.details["few_labels"]["draws"]], dtype=torch.float64)
    assert raw["few_labels_auroc"] == pytest.approx(float(values.mean()))
    assert raw["few_labels_auroc_std"] == pytest.approx(float(values.std(unbiased=False)))


def test_accuracy_for_several_classes_and_auroc_refused_for_them():
    g = np.random.default_rng(1)
    frame = pd.DataFrame({"a": g.normal(size=90), "y": np.repeat([0, 1, 2], 30)})
    data = from_frame(frame, label="y")
    out = FewLabelsEvaluator(FewLabelsConfig(labelled=9, splits=2, mode="frozen"), None).run(_inputs(data, None))
    assert set(out) == {"few_labels_accuracy", "few_labels_accuracy_std"}
    with pytest.raises(ValueError, match="auroc needs a binary label"):
        FewLabelsEvaluator(FewLabelsConfig(metric="auroc"), None).run(_inputs(data, None))
