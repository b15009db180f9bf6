"""What evaluation costs next to training: kNN and the linear probe as a fraction of an epoch.

The SimCLR CIFAR-10 experiment (ResNet-18, CIFAR stem) is built once. Its train step is
timed at the experiment's batch, and an epoch is ``steps per epoch x step time`` over the
full training set. Evaluation is timed as the trainer runs it: frozen features of the
evaluation bank (``evaluation.train_subset`` training images) and of the test images,
extracted once and shared, then each evaluator on them. Run:

    .venv/bin/python benchmarks/eval_cost.py --data-root .cache/data --write

``--bank`` and ``--test`` shrink the evaluation for a quick look (default: the
experiment's 10,000 + the 10,000 test images).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record, train_step

from metacontrast import trainer
from metacontrast.config import compose_config
from metacontrast.evaluation import run_evaluators
from metacontrast.records import Batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--device", default="auto")
    p.add_argument("--bank", type=int, default=10000, help="evaluation.train_subset")
    p.add_argument("--test", type=int, default=0, help="test images (0: all)")
    p.add_argument("--steps", type=int, default=2, help="timed train steps; the best counts")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    cfg = compose_config(["experiment=cifar10_simclr_resnet18", f"data.root={args.data_root}",
                          f"trainer.device={args.device}", f"evaluation.train_subset={args.bank}",
                          f"data.test_subset={args.test}", "trainer.run_dir=/tmp/mc-eval-bench",
                          "trainer.progress=false", "logger=[jsonl]"])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    batch = Batch(images=run.data.train_images[:b].to(run.device), index=torch.arange(b))
    train_step(run, step_fn, batch)  # warm-up
    step_s = float("inf")
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step(run, step_fn, batch)
        step_s = min(step_s, time.perf_counter() - start)
    n_train = int(run.data.train_images.shape[0])
    epoch_s = (n_train // b) * step_s

    run.model.eval()
    inputs = trainer.eval_inputs(run, run.model.encoder)
    start = time.perf_counter()
    train_features, test_features = inputs.frozen()
    timings = {"frozen features": time.perf_counter() - start}
    for name, evaluator in run.components.evaluators.items():
        start = time.perf_counter()
        metrics = run_evaluators({name: evaluator}, inputs)
        timings[f"{name} ({', '.join(sorted(metrics))})"] = time.perf_counter() - start
    total = sum(timings.values())
    n_bank, n_test = train_features.x.shape[0], test_features.x.shape[0]
    rows = [[what, f"{s:.1f}", f"{100 * s / epoch_s:.1f}%"] for what, s in timings.items()]
    rows.append(["**all evaluation**", f"**{total:.1f}**", f"**{100 * total / epoch_s:.1f}%**"])
    body = "\n".join([
        "### Evaluation cost as a fraction of a training epoch (SimCLR, ResNet-18, CIFAR-10)",
        "",
        f"Command: `.venv/bin/python benchmarks/eval_cost.py --data-root {args.data_root} --bank {args.bank} "
        + (f"--test {args.test} " if args.test else "") + "--write`",
        "",
        f"Machine: {machine()}. Epoch: {n_train // b} steps of {b} images x {step_s:.2f} s (best of "
        f"{args.steps} timed steps) = {epoch_s:.0f} s. Evaluation: features of {n_bank} bank and "
        f"{n_test} test images (forward only, in evaluation batches of {int(cfg.evaluation.batch_size)}), "
        f"then each configured evaluator on them.",
        "",
        markdown_table(["part", "seconds", "of one epoch"], rows),
    ])
    print(body)
    if args.write:
        record("eval_cost_" + ("cuda" if run.device.type == "cuda" else "cpu"), body)


if __name__ == "__main__":
    main()
