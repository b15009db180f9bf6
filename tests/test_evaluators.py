"""kNN against a per-query loop; linear probe against scikit-learn."""

import numpy as np
import pytest
import torch

from metacontrast.builtin.evaluators import KNNEvaluator
from metacontrast.builtin.linear_probe import LinearProbeEvaluator
from metacontrast.classifiers import KNNConfig, LinearProbeConfig, knn_predict
from metacontrast.records import Features


def _knn_loop(train_x, train_y, test_x, k, t, c):
    out = torch.zeros(len(test_x), c, dtype=torch.float64)
    tx = train_x.double() / train_x.double().norm(dim=1, keepdim=True)
    for i, q in enumerate(test_x.double()):
        q = q / q.norm()
        sims = [(float(q @ tx[j]), j) for j in range(len(tx))]
        sims.sort(key=lambda s: -s[0])
        for s, j in sims[:k]:
            out[i, int(train_y[j])] += np.exp(s / t)
    return out


def test_knn_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(60, 5, generator=g), torch.randn(13, 5, generator=g)
    train_y = torch.randint(0, 4, (60,), generator=g)
    fast = knn_predict(train_x, train_y, test_x, k=7, temperature=0.2, num_classes=4, chunk=5)
    slow = _knn_loop(train_x, train_y, test_x, 7, 0.2, 4)
    torch.testing.assert_close(fast.double(), slow, rtol=1e-4, atol=1e-4)


def test_knn_evaluator_top1_on_clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 8, generator=g) * 5
    y = torch.arange(90) % 3
    x = centres[y] + 0.1 * torch.randn(90, 8, generator=g)
    ev = KNNEvaluator(KNNConfig(k=5, temperature=0.1), None)
    metrics = ev.evaluate(Features(x[:60], y[:60]), Features(x[60:], y[60:]))
    assert metrics["knn_top1"] == 1.0
    shuffled = ev.evaluate(Features(x[:60], y[:60][torch.randperm(60, generator=g)]), Features(x[60:], y[60:]))
    assert shuffled["knn_top1"] < 0.8


def test_linear_probe_agrees_with_sklearn():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 4, generator=g)
    x = torch.randn(400, 6, generator=g)
    y = (x @ w + 0.5 * torch.randn(400, 4, generator=g)).argmax(1)
    ours = LinearProbeEvaluator(LinearProbeConfig(weight_decay=1e-3, max_iter=300), None)
    acc = ours.evaluate(Features(x[:300], y[:300]), Features(x[300:], y[300:]))["linear_top1"]
    xs = ((x - x[:300].mean(0)) / x[:300].std(0)).numpy()
    sk = LogisticRegression(C=1.0 / (1e-3 * 300), max_iter=2000).fit(xs[:300], y[:300].numpy())
    sk_acc = float((sk.predict(xs[300:]) == y[300:].numpy()).mean())
    assert abs(acc - sk_acc) <= 0.03
    assert acc > 0.8


def test_majority_knn_agrees_with_scikit_learn_cosine_knn_including_ties():
    """``vote=majority`` (k = 10) predicts what ``KNeighborsClassifier(n_neighbors=10,
    metric="cosine")`` predicts on random features, ties between classes included (three
    classes and ten neighbours make 4-4-2 splits common)."""
    from sklearn.neighbors import KNeighborsClassifier

    g = torch.Generator().manual_seed(3)
    train_x, test_x = torch.randn(500, 16, generator=g), torch.randn(400, 16, generator=g)
    train_y, test_y = torch.randint(0, 3, (500,), generator=g), torch.randint(0, 3, (400,), generator=g)
    sk = KNeighborsClassifier(n_neighbors=10, metric="cosine").fit(train_x.numpy(), train_y.numpy())
    expected = torch.from_numpy(sk.predict(test_x.numpy()))
    ours = knn_predict(train_x, train_y, test_x, k=10, temperature=0.1, num_classes=3, chunk=64, vote="majority")
    assert torch.equal(ours.argmax(1), expected)
    # the comparison covered ties: some test rows' neighbours split evenly between classes
    neighbours = torch.from_numpy(sk.kneighbors(test_x.numpy(), return_distance=False))
    counts = torch.nn.functional.one_hot(train_y[neighbours], 3).sum(1)
    top2 = counts.topk(2, dim=1).values
    assert (top2[:, 0] == top2[:, 1]).sum() >= 10
    ev = KNNEvaluator(KNNConfig(k=10, vote="majority"), None)
    ev.key = "knn_majority"
    metrics = ev.evaluate(Features(train_x, train_y), Features(test_x, test_y))
    assert list(metrics) == ["knn_majority_top1"]  # three classes: no top-5
    assert metrics["knn_majority_top1"] == pytest.approx(sk.score(test_x.numpy(), test_y.numpy()), abs=1e-6)


def test_a_vote_that_does_not_exist_is_named(capsys):
    with pytest.raises(ValueError, match="vote: unknown 'plurality'; available: weighted, majority"):
        KNNConfig(vote="plurality")
    from metacontrast.cli import main

    assert main(["config", "eval=[knn_majority]", "eval.knn_majority.vote=plural"]) == 2
    assert "eval.knn_majority: vote: unknown 'plural'" in capsys.readouterr().err  # its own section
