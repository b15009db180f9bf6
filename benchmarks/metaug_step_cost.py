"""MetAug's step cost: the bi-level step against an ordinary step and against SimCLR, with
one backbone (split AlexNet, fc variant, L and ab views), CIFAR-10 images and batch 64
(the paper's), measured in one process in interleaved rounds (best of R).

Rows: the bare forward+backward of the encoder on the batch (one view and two views: the
ceiling the steps are read against), SimCLR (two views, NT-Xent), MetAug (only OUCL: the
ordinary step), MetAug first order, MetAug (second order, the default). Run:

    .venv/bin/python benchmarks/metaug_step_cost.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import best_of_rounds, machine, markdown_table, record, train_step

from metacontrast import trainer
from metacontrast.config import compose_config
from metacontrast.records import Batch

METHODS = {
    "SimCLR (2 views, NT-Xent)": ["experiment=metaug_cifar10/simclr"],
    "MetAug (only OUCL): the ordinary step": ["experiment=metaug_cifar10/metaug_only_oucl"],
    "MetAug, first-order meta step": ["experiment=metaug_cifar10/metaug", "loss.metaug.second_order=false"],
    "MetAug (second-order meta step, default)": ["experiment=metaug_cifar10/metaug"],
}


def build(args: argparse.Namespace, extra: list[str]):
    cfg = compose_config([*extra, f"data.root={args.data_root}", f"trainer.batch_size={args.batch}",
                          "trainer.run_dir=/tmp/mc-bench", "data.train_subset=2048", "data.test_subset=16",
                          "trainer.progress=false"])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    images = run.data.train_images[: args.batch].to(run.device)
    batch = Batch(images=images, index=torch.arange(args.batch, device=run.device))
    return run, (lambda: train_step(run, step_fn, batch))


def bare(run, n_views: int, batch: int):
    """Forward and backward of the encoder alone on ``n_views * batch`` normalised images."""
    encoder = run.model.encoder
    x = torch.randn(n_views * batch, 3, 32, 32, device=run.device)

    def step() -> None:
        with run.autocast():
            h = encoder(x)
        h.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    built = {name: build(args, extra) for name, extra in METHODS.items()}
    run = next(iter(built.values()))[0]
    timed = {"bare encoder fwd+bwd, 1 view": bare(run, 1, args.batch),
             "bare encoder fwd+bwd, 2 views": bare(run, 2, args.batch),
             **{name: fn for name, (_, fn) in built.items()}}
    best = best_of_rounds(timed, args.steps, args.rounds)
    simclr, ordinary = best["SimCLR (2 views, NT-Xent)"], best["MetAug (only OUCL): the ordinary step"]
    rows = [[name, f"{1000 * t:.0f}", f"{t / simclr:.2f}", f"{t / ordinary:.2f}"] for name, t in best.items()]
    body = "\n".join([
        "### MetAug's bi-level step vs an ordinary step and SimCLR (split AlexNet)",
        "",
        f"Command: `.venv/bin/python benchmarks/metaug_step_cost.py --data-root {args.data_root} "
        f"--batch {args.batch} --write`",
        "",
        f"Machine: {machine()}. Batch {args.batch} CIFAR-10 images; split AlexNet (fc variant, width 0.5 per "
        f"view, L and ab); precision `auto`; best of {args.rounds} interleaved rounds of {args.steps} steps. "
        "The steps are the trainer's (views, forward, losses, backward, optimizer, memory write).",
        "",
        markdown_table(["step", "ms", "/ SimCLR step", "/ ordinary MetAug step"], rows),
        "",
        "SimCLR encodes two views per image; the MetAug rows one view (its L and ab channels go to "
        "the two half networks). The bi-level step adds: the ordinary gradient kept as a graph "
        "(create_graph), a second forward with the fast weights, and the backward of the meta "
        "objective through that forward and through the first gradient (second order). The "
        "first-order row drops the last part.",
    ])
    print(body)
    if args.write:
        record("metaug_step_cost", body)


if __name__ == "__main__":
    main()
