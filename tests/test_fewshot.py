"""Few-shot evaluation: episodes, classifiers against loops, the confidence interval, and
Omniglot from ../shared/data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from metacontrast.builtin.fewshot import FewShotConfig, FewShotEvaluator, episode_accuracy, sample_episodes
from metacontrast.config import DataConfig
from metacontrast.data import load_dataset
from metacontrast.interfaces import BuildContext
from metacontrast.records import Features

CTX = BuildContext(in_channels=1, image_size=8, mean=(0.5,), std=(0.2,))


def _data(n_classes=8, per_class=25, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g) * 2
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[y] + torch.randn(len(y), d, generator=g), y


def test_episodes_have_distinct_classes_and_samples():
    _, y = _data()
    index = sample_episodes(y, 5, 6, 50, torch.Generator().manual_seed(1))
    assert index.shape == (50, 5, 6)
    for ep in index:
        classes = y[ep]
        assert (classes == classes[:, :1]).all()  # each row is one class
        assert classes[:, 0].unique().numel() == 5 and ep.flatten().unique().numel() == 30
    with pytest.raises(ValueError, match="need 9 classes"):
        sample_episodes(y, 9, 6, 1, torch.Generator())


@pytest.mark.parametrize("classifier", ["protonet", "ridge"])
def test_episode_accuracy_equals_a_loop(classifier):
    x, y = _data()
    index = sample_episodes(y, 4, 1 + 5, 20, torch.Generator().manual_seed(2))
    got = episode_accuracy(x, index, 1, classifier, lam=0.5)
    feats = F.normalize(x, dim=-1)
    for e in range(20):
        support = feats[index[e, :, :1]].reshape(4, -1)  # 1 shot: the prototype is the sample
        correct = 0
        for w in range(4):
            for q in index[e, w, 1:].tolist():
                if classifier == "protonet":
                    pred = min(range(4), key=lambda c: float(((feats[q] - support[c]) ** 2).sum()))
                else:
                    weights = torch.linalg.solve(support.T @ support + 0.5 * torch.eye(6), support.T)
                    pred = int((feats[q] @ weights).argmax())
                correct += pred == w
        assert got[e].item() == pytest.approx(correct / 20)


def test_report_is_mean_and_95_percent_interval():
    x, y = _data(per_class=30)
    ev = FewShotEvaluator(FewShotConfig(ways=5, shots=[1, 5], queries=10, episodes=600, seed=3), CTX)
    out = ev.evaluate(Features(x[:10], y[:10]), Features(x, y))
    assert set(out) == {"fewshot_5w1s", "fewshot_5w1s_ci95", "fewshot_5w5s", "fewshot_5w5s_ci95"}
    index = sample_episodes(y, 5, 1 + 10, 600, torch.Generator().manual_seed(3 * 1000 + 1))
    acc = episode_accuracy(x, index, 1, "protonet", 1.0)
    assert out["fewshot_5w1s"] == pytest.approx(acc.mean().item())
    assert out["fewshot_5w1s_ci95"] == pytest.approx(1.96 * acc.std().item() / 600 ** 0.5)
    assert out["fewshot_5w5s"] > out["fewshot_5w1s"] > 0.2  # more shots help; better than chance


def test_logistic_classifier_runs():
    x, y = _data()
    ev = FewShotEvaluator(FewShotConfig(ways=3, shots=[2], queries=4, episodes=5, classifier="logistic"), CTX)
    assert 0.0 <= ev.evaluate(Features(x, y), Features(x, y))["fewshot_3w2s"] <= 1.0


@pytest.mark.data
def test_omniglot_from_shared_data_raw_pixels(prepared_data):
    d = load_dataset(OmegaConf.structured(DataConfig(name="omniglot", root=str(prepared_data), image_size=28)))
    assert d.test_labels.unique().numel() >= 20
    assert set(d.train_labels.unique().tolist()).isdisjoint(d.test_labels.unique().tolist())
    pixels = d.test_images.float().flatten(1)
    ev = FewShotEvaluator(FewShotConfig(ways=5, shots=[1], queries=15, episodes=600), CTX)
    out = ev.evaluate(Features(pixels[:5], d.test_labels[:5]), Features(pixels, d.test_labels))
    assert out["fewshot_5w1s"] > 0.35 and out["fewshot_5w1s_ci95"] < 0.03
