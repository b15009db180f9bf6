"""CLSA's Table 4 ablation at a CPU-sized scale on CIFAR-10 (JPEG q75 copy): MoCo v2,
MoCo v2 with strong query, CLSA-single with contrastive loss, CLSA-single. Each row is
``metacontrast train experiment=clsa_table4/<row>`` in a fresh process with one shared
step count; the table collects each run's results.json. Run:

    .venv/bin/python benchmarks/clsa_table4_cifar10_short.py --data-root .cache/data --write

``--only clsa_single,moco_v2`` runs a subset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record, train_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "docs" / "experiments.md"
ROWS = {"moco_v2": ("MoCo v2", "67.5"), "moco_v2_strong_query": ("MoCo v2 with strong query", "67.7"),
        "clsa_single_contrastive": ("CLSA-single with contrastive loss", "68.0"),
        "clsa_single": ("CLSA-single", "69.4")}


def run(name: str, args: argparse.Namespace) -> dict:
    return train_experiment(name, Path(args.runs) / name, [f"experiment=clsa_table4/{name}",
                            f"data.root={args.data_root}", f"trainer.max_steps={args.steps}"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--runs", default="runs/clsa_table4_short")
    p.add_argument("--only", default="")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    names = [n for n in ROWS if not args.only or n in args.only.split(",")]
    rows, total = [], 0.0
    for name in names:
        r = run(name, args)
        total += r["wall_s"]
        m = r["metrics"]["pretrained"]
        rows.append([ROWS[name][0], f"`{name}`", ROWS[name][1], f"{100 * m['knn_top1']:.1f}",
                     f"{r['final_loss']:.2f}", f"{r['wall_s']:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    body = "\n".join([
        "## CLSA's Table 4 ablation at CPU scale",
        "",
        f"Command: `.venv/bin/python benchmarks/clsa_table4_cifar10_short.py --data-root {args.data_root} "
        f"--steps {args.steps} --write` (each row: `metacontrast train experiment=clsa_table4/<row> "
        f"trainer.max_steps={args.steps}`).",
        "",
        f"CIFAR-10 (JPEG q75 copy), Conv-4 with global average pooling (64-d), projection 512 -> 128, batch "
        f"256, {args.steps} steps ({args.steps * 256 / 50000:.1f} epochs), queue K = 4096, t = 0.2, "
        "key momentum 0.99, SGD lr 0.06 x batch/256 with cosine decay, weight decay 1e-4, "
        "precision `auto` (fp32 on a CPU without bf16), one seed. Strong view: one 16-pixel crop "
        "(half the side; the paper's 96/224 would be 14, too small for Conv-4's four poolings), 5 rounds of "
        "Table 1's operations. kNN (k = 200, t = 0.1, bank: a fixed 10,000-image train subset) on "
        "all 10,000 test images. The paper's column is ImageNet linear top-1 after 200 epochs "
        f"(ResNet-50), for orientation only. Machine: {machine()}; {total / 60:.0f} minutes in all.",
        "",
        "Read with care: one seed, five epochs, a small encoder, kNN instead of a trained linear "
        "probe. Differences of a point or two are within what another seed would move.",
        "",
        markdown_table(["Table 4 row", "experiment", "paper (ImageNet linear)", "kNN top-1 here",
                        "final loss", "wall (s)"], rows),
    ])
    print(body)
    if args.write:
        record("clsa_table4_cifar10_short", body, EXPERIMENTS)


if __name__ == "__main__":
    main()
