"""Linear-probe solvers on one fixed feature set: accuracy and time of L-BFGS, the
papers' SGD schedule, closed-form ridge, and scikit-learn's logistic regression as the
yardstick (plus weighted kNN), measured in one run.

Features: a Conv-4 at random initialisation (seeded) on CIFAR-10, a fixed nonlinear
feature map, so every solver faces the same convex problem.

    .venv/bin/python benchmarks/linear_probe_solvers.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from metacontrast.builtin.encoders import Conv4, Conv4Config
from metacontrast.builtin.evaluators import KNNEvaluator
from metacontrast.builtin.linear_probe import LinearProbeEvaluator
from metacontrast.classifiers import KNNConfig, LinearProbeConfig
from metacontrast.config import DataConfig
from metacontrast.data import load_dataset
from metacontrast.evaluation import extract_features
from metacontrast.interfaces import BuildContext
from metacontrast.records import Features

try:
    from _report import machine, markdown_table, record
except ImportError:  # run as a module
    from benchmarks._report import machine, markdown_table, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=".cache/data")
    parser.add_argument("--train", type=int, default=50000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig),
                          {"name": "cifar10", "root": args.data_root, "train_subset": args.train,
                           "test_subset": args.test})
    data = load_dataset(cfg)
    context = BuildContext(in_channels=3, image_size=32, mean=data.mean, std=data.std)
    encoder = Conv4(Conv4Config(), context)
    start = time.perf_counter()
    def features(images: torch.Tensor) -> torch.Tensor:
        return extract_features(encoder, images, mean=data.mean, std=data.std, batch_size=500)

    train = Features(features(data.train_images), data.train_labels)
    test = Features(features(data.test_images), data.test_labels)
    extract_s = time.perf_counter() - start
    n, wd = train.x.shape[0], 1e-4

    rows = []

    def timed(name: str, how: str, fn) -> None:
        start = time.perf_counter()
        acc = fn()
        rows.append([name, how, f"{100 * acc:.2f}", f"{time.perf_counter() - start:.2f}"])
        print(rows[-1], flush=True)

    def probe(**kw) -> float:
        return LinearProbeEvaluator(LinearProbeConfig(**kw), None).evaluate(train, test)["linear_top1"]

    timed("linear (lbfgs)", f"logistic, wd {wd}, 200 iterations",
          lambda: probe(weight_decay=wd, max_iter=200))
    timed("linear_sgd", "logistic, SGD Nesterov, 90 epochs, batch 1024, lr 0.1 x 4, cosine, wd 0",
          lambda: probe(solver="sgd", weight_decay=0.0, epochs=90, batch_size=1024, lr=0.1))
    timed("linear (closed_form)", f"squared loss, ridge wd {wd}",
          lambda: probe(solver="closed_form", loss="squared", weight_decay=wd))

    def sklearn() -> float:
        from sklearn.linear_model import LogisticRegression

        mu, sd = train.x.mean(0), train.x.std(0).clamp_min(1e-6)
        model = LogisticRegression(C=1.0 / (wd * n), max_iter=1000)
        model.fit(((train.x - mu) / sd).numpy(), train.y.numpy())
        return float((model.predict(((test.x - mu) / sd).numpy()) == test.y.numpy()).mean())

    timed("scikit-learn", "LogisticRegression(lbfgs), C = 1 / (wd N), same objective", sklearn)
    timed("knn", "k 200, t 0.1", lambda: KNNEvaluator(KNNConfig(), None).evaluate(train, test)["knn_top1"])

    header = ["protocol", "settings", "top-1 (%)", "seconds"]
    table = markdown_table(header, rows)
    print(table)
    if args.write:
        body = (f"### Linear-probe solvers on one feature set\n\n"
                f"`.venv/bin/python benchmarks/linear_probe_solvers.py --data-root .cache/data --write`; "
                f"{machine()}.\n\nCIFAR-10, {n} train / {test.x.shape[0]} test images, features of a "
                f"seeded random-init Conv-4 (flattened, {train.x.shape[1]} dims; extraction "
                f"{extract_s:.1f} s). Same objective for L-BFGS and scikit-learn, so their accuracies "
                f"should agree; SGD follows the papers' schedule without weight decay; closed form "
                f"solves the squared loss.\n\n{table}\n")
        record("linear-probe-solvers", body)
        print(f"recorded in {Path('docs/benchmarks.md')}")


if __name__ == "__main__":
    main()
