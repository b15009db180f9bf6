"""Tabular pre-training with 50 labels (Ni et al. 2022, appendix A.5, Table 11) on the
bundled scikit-learn tables. For every table and split seed, SimCLR's NT-Xent
("contrastive") and R2-D2 pre-train the column-embedding MLP on the train split's rows
(SAINT-style views); the few-label evaluation then fine-tunes the encoder with a linear
layer on 50 labelled train rows (5 draws) and scores the test split (AUROC for a binary
label, accuracy otherwise). "none" is the same encoder fine-tuned from its random
initialisation (the paper's "-"), "raw" a logistic regression on the encoded rows.
Every run is the command line in a fresh process. Run:

    .venv/bin/python benchmarks/tabular_pretraining.py --write

Each cell: mean +- std over the split seeds of each split's mean over the 5 draws.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record, train_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "docs" / "experiments.md"
METHODS = {"simclr": "contrastive", "r2d2": "R2-D2"}
COMMON = ["eval=[few_labels]", "trainer.checkpoint_every=0", "trainer.threads=1"]
ENCODERS = {"tabular_mlp": "Column-embedding MLP (16 per column, 256-256)",
            "tabular_transformer": "Column-embedding transformer (32 per column, 2 pre-norm blocks of 4 "
                                   "heads, [CLS] output)"}


def run_one(table: str, method: str, split: int, args: argparse.Namespace) -> tuple[str, str, int, dict]:
    baselines = "[random_init,raw_pixels]" if method == "simclr" else "[]"
    name = f"{args.encoder}_{table}_{method}_split{split}"
    results = train_experiment(name, Path(args.runs) / name, [
        *COMMON, f"data=tabular/{table}", f"method={method}", f"encoder={args.encoder}",
        f"data.table.split_seed={split}",
        f"trainer.seed={split}", f"trainer.epochs={args.epochs}", f"evaluation.baselines={baselines}"])
    return table, method, split, results


def metric_of(metrics: dict) -> tuple[str, float]:
    name = next(k for k in metrics if k.startswith("few_labels_") and not k.endswith("_std"))
    return name.removeprefix("few_labels_"), metrics[name]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", default=["breast_cancer", "wine", "digits"])
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--encoder", default="tabular_mlp", choices=list(ENCODERS))
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each on one thread)")
    p.add_argument("--runs", default="runs/tabular_pretraining")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    jobs = [(t, m, s) for t in args.tables for s in range(args.splits) for m in METHODS]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda j: run_one(*j, args), jobs))
    scores: dict[tuple[str, str], list[float]] = {}
    metric_names: dict[str, str] = {}
    wall: dict[str, list[float]] = {}
    for table, method, _, results in done:
        metrics = results["metrics"]
        metric_names[table], value = metric_of(metrics["pretrained"])
        scores.setdefault((table, METHODS[method]), []).append(value)
        wall.setdefault(METHODS[method], []).append(results["wall_s"])
        if method == "simclr":
            scores.setdefault((table, "none"), []).append(metric_of(metrics["random_init"])[1])
            scores.setdefault((table, "raw"), []).append(metric_of(metrics["raw_pixels"])[1])

    def cell(values: list[float]) -> str:
        return f"{100 * statistics.mean(values):.2f} +- {100 * statistics.pstdev(values):.2f}"

    columns = ["none", "raw", "contrastive", "R2-D2"]
    rows = [[t, metric_names[t], *(cell(scores[(t, c)]) for c in columns)] for t in args.tables]
    table = markdown_table(["table", "metric (%)", "none (fine-tuned from init)", "raw rows (logistic)",
                            "contrastive", "R2-D2"], rows)
    print(table)
    seconds = ", ".join(f"{m} {statistics.mean(w):.0f} s" for m, w in wall.items())
    command = (f".venv/bin/python benchmarks/tabular_pretraining.py --tables {' '.join(args.tables)} "
               f"--splits {args.splits} --epochs {args.epochs} --encoder {args.encoder} --jobs {args.jobs} "
               f"--write")
    body = "\n".join([
        f"## Tabular pre-training with 50 labels (Ni et al. A.5) on the bundled tables: {args.encoder}", "",
        f"`{command}`", "", f"Machine: {machine()}.", "",
        f"{ENCODERS[args.encoder]}, SAINT-style views (a clean row and a row with "
        f"30% of its columns from another row, its embeddings mixed 0.7/0.3), batch 128 (32 for wine and "
        f"iris, about 120 train rows), AdamW lr 1e-3 weight decay 0.05, 10 warm-up epochs then cosine, "
        f"{args.epochs} epochs on the train split (70% of the rows, stratified, split seed = run seed). "
        f"Evaluation: 5 draws of 50 labelled train rows, the encoder fine-tuned with a linear layer "
        f"(AdamW 1e-3, 200 full-batch steps), scored on the test split. Cells: mean +- std over "
        f"{args.splits} split seeds. Mean wall-clock per run (pre-training and evaluation, one thread): "
        f"{seconds}.", "", table])
    if args.write:
        record(f"tabular_pretraining_{args.encoder}", body, EXPERIMENTS)


if __name__ == "__main__":
    main()
