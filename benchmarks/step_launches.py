"""Device operations one train step dispatches outside the network's own passes, per method.

On a GPU at 32 pixels the network's forward and backward take about 10 ms; every other
operation the step dispatches costs the host a launch of a few microseconds, so a step of
a thousand small operations is bound by its launches. This script counts them on any
machine (``metacontrast.launches``): each method is built as in ``method_throughput.py``
(ResNet-18, CIFAR stem, the method's own views), one warm-up step runs, then one step is
counted as the trainer takes it, with the view generators selecting rows the way they do
on an accelerator (masks, no host waits) and bf16 autocast (a GPU's ``precision=auto``).
The bare encoder passes of that step are replayed and counted alone; ``outside`` is the
difference. The batch size does not change the counts.

    .venv/bin/python benchmarks/step_launches.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record

from metacontrast import trainer
from metacontrast.config import compose_config
from metacontrast.launches import StepLaunches, count_step
from metacontrast.records import Batch
from metacontrast_kornia import ops

PHASES = ("views", "forward", "backward", "guards", "optimizer", "after")


def measure(args: argparse.Namespace, name: str) -> StepLaunches:
    from method_throughput import overrides

    cfg = compose_config([*overrides(args, name), "trainer.precision=bf16"])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    import torch

    batch = Batch(images=run.data.train_images[:b].to(run.device), index=torch.arange(b, device=run.device))
    with ops.selection("mask"):
        from _report import train_step

        train_step(run, step_fn, batch)  # warm-up: optimizer state, constants made once
        return count_step(run, step_fn, batch, where=args.where)


def row(name: str, n: StepLaunches, simclr: int | None) -> list[str]:
    phase = dict(n.by_phase)
    backward_outside = phase.get("backward", 0) - (n.network - n.network_forward)
    # a step of its own (MetAug's) runs its backward passes inside its forward
    backward = str(backward_outside) if backward_outside >= 0 else "in forward"
    cells = [str(phase.get("views", 0)), str(phase.get("forward", 0)), backward]
    cells += [str(phase.get(p, 0)) for p in PHASES[3:]]
    ratio = f"{n.outside / simclr:.2f}" if simclr else "-"
    return [name, str(n.total), str(n.network), f"**{n.outside}**", *cells, ratio]


def main() -> None:
    from method_throughput import DEFAULT_METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--where", action="store_true", help="also print the operations by calling file")
    p.add_argument("--section", default="step_launches_cpu", help="the docs section --write replaces")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    args.device = "cpu"
    names = args.methods.split(",")
    counts = {name: measure(args, name) for name in names}
    simclr = counts["simclr"].outside if "simclr" in counts else None
    rows = [row(name, counts[name], simclr) for name in names]
    header = ["method", "step ops", "network fwd+bwd", "outside the network", "views", "forward (rest)",
              "backward (rest)", "guards", "optimizer", "teacher + memory", "outside / SimCLR's"]
    body = "\n".join([
        "### Device operations per train step, outside the network's own passes",
        "",
        f"Command: `.venv/bin/python benchmarks/step_launches.py --data-root {args.data_root} --write`",
        "",
        f"Machine: {machine()}. ResNet-18 (CIFAR stem) unless the method has its own network, "
        "bf16 autocast, channels_last, rows selected by masks (as on an accelerator), after one "
        "warm-up step. An operation is an ATen kernel call (views, reshapes and bare allocations "
        "excluded; a multi-tensor `_foreach_*` counts once). `forward (rest)`: episode, head, "
        "solver, losses and the framework's own calls around the encoder; `backward (rest)`: the "
        "backward's operations minus the bare network's.",
        "",
        markdown_table(header, rows),
    ])
    print(body)
    if args.where:
        for name in names:
            files = sorted(counts[name].by_file.items(), key=lambda kv: -kv[1])
            print(f"\n{name}: " + ", ".join(f"{f} {n}" for f, n in files))
            top = sorted(counts[name].by_op.items(), key=lambda kv: -kv[1])[:30]
            print("  ops: " + ", ".join(f"{f} {n}" for f, n in top))
    if args.write:
        record(args.section, body)


if __name__ == "__main__":
    main()
