"""Table 6 of Ni et al. (2022) at a CPU-sized scale: SimCLR, R2-D2, ProtoNet and BYOL, each
with the baseline augmentations, + large rotation as task augmentation (TA), + the
rotation loss (LLR), + Un-Mix (Mix) and + Mix + LLR; and the naive rotation for the
Table 5 comparison. Every run is the command line in a fresh process with the same
short schedule; the table collects each run's results.json. Run:

    .venv/bin/python benchmarks/table6_cifar10_short.py --data-root .cache/data --write

``--only simclr_baseline,protonet_ta`` runs a subset (names: <method>_<variant>).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record, train_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "docs" / "experiments.md"
METHODS = {"simclr": "SimCLR", "r2d2": "R2-D2", "protonet": "ProtoNet", "byol": "BYOL"}
VARIANTS = {"baseline": ("Baseline", []), "ta": ("+ TA", ["+task_aug=rotation"]),
            "naive": ("+ naive rotation", ["+task_aug=naive_rotation"]),
            "llr": ("+ LLR", ["+aux=rotation_loss"]), "mix": ("+ Mix", ["+mix=unmix"]),
            "mix_llr": ("+ Mix + LLR", ["+mix=unmix", "+aux=rotation_loss"])}
# The short schedule: Conv-4 on 32-pixel CIFAR-10, batch 256, a fixed number of steps.
COMMON = ["data=cifar10", "views=simclr_cifar", "encoder=conv4", "head.hidden_dim=512", "head.out_dim=128",
          "trainer.batch_size=256", "trainer.epochs=2", "optim.lr=1.0", "optim.weight_decay=1e-6",
          "optim.warmup_epochs=0.2", "evaluation.train_subset=10000", "evaluation.baselines=[]",
          "eval=[knn,few_shot]", "eval.knn.k=200", "trainer.checkpoint_every=0"]


def overrides(method: str, variant: str) -> list[str]:
    extra = [f"method={method}", *VARIANTS[variant][1]]
    if method == "simclr":
        extra += ["loss.nt_xent.temperature=0.5"] if "mix" not in variant else \
            ["solver=all_pairs", "loss=[query_ce]", "solver.temperature=0.5"]
    if method == "r2d2" and "llr" in variant:
        extra += ["loss.rotation.weight=0.01"]  # the paper's lambda for R2-D2
    if method == "byol":
        extra += ["head.hidden_dim=512", "head.out_dim=128", "loss.byol.predictor_hidden=512"]
    return extra


def run(name: str, args: argparse.Namespace) -> dict:
    method, variant = name.split("_", 1)
    return train_experiment(name, Path(args.runs) / name, [*COMMON, f"data.root={args.data_root}",
                            f"trainer.max_steps={args.steps}", *overrides(method, variant)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--runs", default="runs/table6_short")
    p.add_argument("--only", default="")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    names = [f"{m}_{v}" for m in METHODS for v in VARIANTS if v != "naive" or m in ("simclr", "protonet")]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    rows, total = [], 0.0
    for name in names:
        r = run(name, args)
        total += r["wall_s"]
        m = r["metrics"]["pretrained"]
        method, variant = name.split("_", 1)
        shots = [f"{100 * m[f'fewshot_5w{k}s']:.1f} ± {100 * m[f'fewshot_5w{k}s_ci95']:.1f}" for k in (1, 5)]
        rows.append([METHODS[method], VARIANTS[variant][0], f"{100 * m['knn_top1']:.1f}", *shots,
                     f"{r['wall_s']:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    body = "\n".join([
        "## Table 6 at CPU scale: SimCLR, R2-D2, ProtoNet, BYOL with TA, LLR and Mix",
        "",
        f"Command: `.venv/bin/python benchmarks/table6_cifar10_short.py --data-root {args.data_root} "
        f"--steps {args.steps} --write` (each run is `metacontrast train {' '.join(COMMON)} "
        f"trainer.max_steps={args.steps}` plus the method's overrides in the script).",
        "",
        f"Conv-4 (256-d `h`), projection 512 -> 128, batch 256, {args.steps} steps "
        f"({args.steps * 256 / 50000:.1f} epochs of CIFAR-10), LARS lr 1.0 x batch/256, "
        "temperature 0.5, views `simclr_cifar`, bf16 autocast, one seed. kNN (k = 200, bank: "
        "a fixed 10,000-image train subset) on all 10,000 test images; few-shot: 5-way "
        "episodes of the test split with 15 queries a class, nearest prototype, mean ± 95% "
        f"CI over 600 episodes. Machine: {machine()}; {total / 60:.0f} minutes in all.",
        "",
        markdown_table(["method", "augmentations", "kNN top-1", "5-way 1-shot", "5-way 5-shot", "wall (s)"],
                       rows),
    ])
    print(body)
    if args.write:
        record("table6_cifar10_short", body, EXPERIMENTS)


if __name__ == "__main__":
    main()
