"""Time and accuracy at a fixed compute budget on CIFAR-10: every method gets the same
minutes of training.

Each method (Conv-4 on 32-pixel CIFAR-10, batch 256, the short schedule of
``table6_cifar10_short.py``) first times two of its train steps in this process; its run
is then given ``budget / step time`` steps, so that the warm-up and cosine schedule fit
the budget, and trained by ``metacontrast train`` in a fresh process. Evaluation (kNN
with k = 200 against a fixed 10,000-image train subset, and the linear probe) runs after
the budget and is not part of it. Run:

    .venv/bin/python benchmarks/fixed_budget.py --data-root .cache/data --minutes 4 --write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record, train_experiment, train_step
from table6_cifar10_short import COMMON, METHODS, overrides

from metacontrast import trainer
from metacontrast.config import compose_config
from metacontrast.records import Batch

# the short schedule's settings, evaluated by kNN and the linear probe; the steps decide the length
BUDGET_COMMON = [*(o for o in COMMON if not o.startswith(("eval=", "trainer.epochs="))), "eval=[knn,linear]",
                 "trainer.epochs=1000"]


def step_seconds(args: argparse.Namespace, method: str) -> float:
    """Best of two timed train steps of ``method`` after a warm-up step."""
    cfg = compose_config([*BUDGET_COMMON, *overrides(method, "baseline"), f"data.root={args.data_root}",
                          "data.train_subset=512", "trainer.run_dir=/tmp/mc-budget",
                          "trainer.progress=false"])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    batch = Batch(images=run.data.train_images[:b].to(run.device), index=torch.arange(b))
    train_step(run, step_fn, batch)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        train_step(run, step_fn, batch)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget of every method")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--runs", default="runs/fixed_budget")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    rows = []
    for method in args.methods.split(","):
        per_step = step_seconds(args, method)
        steps = max(1, int(args.minutes * 60 / per_step))
        run_dir = Path(args.runs) / method
        r = train_experiment(method, run_dir, [*BUDGET_COMMON, *overrides(method, "baseline"),
                                               f"data.root={args.data_root}", f"trainer.max_steps={steps}"])
        logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [row["images_per_s"] for row in logged if "images_per_s" in row]
        m = r["metrics"]["pretrained"]
        rows.append([METHODS[method], f"{per_step:.2f}", str(steps), f"{steps * 256 / 50000:.1f}",
                     f"{sum(rates) / len(rates):.0f}" if rates else "-", f"{100 * m['knn_top1']:.1f}",
                     f"{100 * m['linear_top1']:.1f}", f"{r['wall_s']:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    body = "\n".join([
        f"### {args.minutes:g} minutes of training per method on CIFAR-10 (Conv-4)",
        "",
        f"Command: `.venv/bin/python benchmarks/fixed_budget.py --data-root {args.data_root} "
        f"--minutes {args.minutes:g} --write`",
        "",
        f"Machine: {machine()}. Each run: `metacontrast train {' '.join(BUDGET_COMMON)} "
        "trainer.max_steps=N` plus the method's overrides (`table6_cifar10_short.py`), N = budget "
        "/ the step time measured just before. kNN (k = 200, bank: a fixed 10,000-image train "
        "subset) and linear probe on all 10,000 test images, one seed; `wall` includes start-up "
        "and evaluation.",
        "",
        markdown_table(["method", "step (s)", "steps in budget", "epochs", "images/s (logged)", "kNN top-1",
                        "linear top-1", "wall (s)"], rows),
    ])
    print(body)
    if args.write:
        record("fixed_budget_cpu", body)


if __name__ == "__main__":
    main()
