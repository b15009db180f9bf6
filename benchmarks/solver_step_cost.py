"""Train-step cost of each method against SimCLR, at the same encoder and batch.

One process builds every method on the same data (ResNet-18 with CIFAR stem, CIFAR-10
images, batch B, the method's views, bf16 autocast where supported, channels_last) and times the
trainer's full step for each, in interleaved rounds (best of R). The solver's own cost is
also timed alone: forward and backward of solver + query loss on fixed projections of
the 2B view-samples. Run:

    .venv/bin/python benchmarks/solver_step_cost.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import best_of_rounds, machine, markdown_table, record, train_step

from metacontrast import trainer
from metacontrast.config import compose_config
from metacontrast.records import Batch, Embeddings, LossInputs, StepInputs

METHODS = {
    "simclr (nt_xent)": ["method=simclr"],
    "simclr (all_pairs + query_ce)": ["method=simclr", "solver=all_pairs", "loss=[query_ce]",
                                      "solver.temperature=0.2"],
    "protonet": ["method=protonet"],
    "r2d2": ["method=r2d2"],
    "svm (30 FISTA steps)": ["method=svm"],
    "byol (EMA teacher)": ["method=byol", "head.hidden_dim=2048", "head.out_dim=256"],
    # the SimCLR experiment's nt_xent setting is switched off for the MoCo-based methods
    "moco_v2 (key encoder on view 1 only, queue 65536)": ["method=moco_v2", "views=moco_v2_cifar",
                                                           "loss.nt_xent=null"],
    "clsa_single (+ one 14-px strong view, DDM)": ["method=clsa_single", "views=clsa_single_cifar",
                                                   "loss.nt_xent=null"],
    "clsa_multi (+ 32/28/24/18/14-px strong views)": ["method=clsa_multi", "views=clsa_multi_cifar",
                                                      "loss.nt_xent=null"],
}


def precision() -> str:
    """What ``trainer.precision=auto`` gives on this machine's CPU."""
    dtype = trainer.resolve_precision("auto", torch.device("cpu"))
    return "bf16 autocast" if dtype == torch.bfloat16 else "fp32 (no bf16 on this CPU)"


def build(args: argparse.Namespace, extra: list[str]):
    cfg = compose_config(["experiment=cifar10_simclr_resnet18", f"data.root={args.data_root}", *extra,
                          f"trainer.batch_size={args.batch}", "trainer.forward_chunks=1",
                          "trainer.run_dir=/tmp/mc-bench", "data.train_subset=2048", "data.test_subset=16",
                          "trainer.progress=false"])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    images = run.data.train_images[: args.batch].to(run.device)
    batch = Batch(images=images, index=torch.arange(args.batch, device=run.device))

    def full() -> None:  # what trainer.train_steps does for one step, guards included
        train_step(run, step_fn, batch)

    solver_only = None
    if run.model.solver is not None:
        views = step_fn.views(batch, StepInputs(generator=run.generator, step=0, model=run.wrapped))
        episode = step_fn.episode_builder(views)
        z = torch.randn(2 * args.batch, run.model.head.out_dim, device=run.device, requires_grad=True)

        def solver_only() -> None:
            emb = Embeddings(h=z, z=z)
            logits = run.model.solver(emb, episode)
            loss = sum(loss(LossInputs(views=views, episode=episode, embeddings=emb, logits=logits))
                       for loss in run.model.losses.values())
            loss.backward()
            z.grad = None

    return full, solver_only


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    built = {name: build(args, extra) for name, extra in METHODS.items()}
    fns = {}
    for name, (full, solver) in built.items():
        fns[name] = full
        if solver is not None:
            fns[f"{name}/solver"] = solver
    repeats = {name: 5 if name.endswith("/solver") else args.steps for name in fns}
    best = best_of_rounds(fns, repeats, args.rounds)
    base = best["simclr (nt_xent)"]
    rows = []
    for name in built:
        t, solver = best[name], best.get(f"{name}/solver")
        s = f"{1000 * solver:.1f} ms ({100 * solver / t:.1f}% of its step)" if solver is not None else "-"
        rows.append([name, f"{t:.2f}", f"{t / base:.2f}", s])
    body = "\n".join([
        "### Step cost of each method vs SimCLR (ResNet-18, CIFAR stem)",
        "",
        f"Command: `.venv/bin/python benchmarks/solver_step_cost.py --data-root {args.data_root} "
        f"--batch {args.batch} --write`",
        "",
        f"Machine: {machine()}. Batch {args.batch} images (2 views of 32 pixels unless the method "
        f"says otherwise), {precision()} and channels_last, "
        f"best of {args.rounds} interleaved rounds of {args.steps} steps.",
        "",
        markdown_table(["method", "full step (s)", "step / SimCLR step", "solver + loss alone (fwd+bwd)"],
                       rows),
        "",
        "The full step is the trainer's (views on the device, encoder, head, solver, losses, "
        "backward, optimizer, scheduler, EMA update, memory write). The solver column times the "
        "solver and its loss on fixed projections of the 2B view-samples, in float32. MoCo v2 "
        "encodes one view online (forward and backward) and one with the key encoder (forward "
        "only); CLSA adds the strong views online.",
    ])
    print(body)
    if args.write:
        record("solver_step_cost", body)


if __name__ == "__main__":
    main()
