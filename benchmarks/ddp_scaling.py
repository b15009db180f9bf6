"""One process against several (DDP over gloo) on the same global batch and the same cores.

Each configuration runs the SimCLR experiment's train step (ResNet-18, CIFAR stem) on the
same global batch: ``world`` processes started as ``torchrun`` would start them (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``), each with ``cores / world`` threads and
``batch / world`` images, NT-Xent gathering the projections of all ranks and DDP
averaging the gradients. The table gives the step time and the view-images per second of
the whole group, and the speed-up over one process. Run:

    .venv/bin/python benchmarks/ddp_scaling.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

import torch
import torch.multiprocessing as mp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record, train_step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from metacontrast import trainer
    from metacontrast.config import compose_config
    from metacontrast.records import Batch

    threads = max(1, args.cores // world)
    cfg = compose_config([
        "experiment=cifar10_simclr_resnet18", f"data.root={args.data_root}",
        f"trainer.batch_size={args.batch}",
        "trainer.device=cpu", f"trainer.threads={threads}", "trainer.forward_chunks=1",
        "trainer.run_dir=/tmp/mc-ddp-bench", f"data.train_subset={2 * args.batch}", "data.test_subset=16",
        "trainer.progress=false", "logger=[jsonl]"])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    per = args.batch // world
    index = torch.arange(rank * per, (rank + 1) * per)
    batch = Batch(images=run.data.train_images[index], index=index)
    train_step(run, step_fn, batch)  # warm-up
    best = float("inf")
    for _ in range(args.steps):
        if world > 1:
            torch.distributed.barrier()
        start = time.perf_counter()
        train_step(run, step_fn, batch)
        if world > 1:
            torch.distributed.barrier()
        best = min(best, time.perf_counter() - start)
    if rank == 0:
        out.put((world, threads, best))
    if world > 1:
        torch.distributed.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> tuple[int, int, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(_worker, args=(world, _free_port(), args, out), nprocs=world, start_method="spawn")
    return out.get()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--batch", type=int, default=128, help="global batch (images)")
    p.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--worlds", default="1,2")
    p.add_argument("--steps", type=int, default=3, help="timed steps; the best counts")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    results = [measure(int(w), args) for w in args.worlds.split(",")]
    base = results[0][2]
    rows = [[str(w), str(t), str(args.batch // w), f"{s:.2f}", f"{2 * args.batch / s:.1f}", f"{base / s:.2f}"]
            for w, t, s in results]
    body = "\n".join([
        "### One process vs several (DDP, gloo) on the same global batch",
        "",
        f"Command: `.venv/bin/python benchmarks/ddp_scaling.py --data-root {args.data_root} "
        f"--batch {args.batch} --write`",
        "",
        f"Machine: {machine()}. SimCLR experiment's step (ResNet-18, CIFAR stem, LARS, NT-Xent over "
        f"the gathered projections), global batch {args.batch} images = {2 * args.batch} view-images, "
        f"{args.cores} cores shared by the processes, best of {args.steps} steps.",
        "",
        markdown_table(["processes", "threads each", "images per rank", "step (s)",
                        "view-img/s (all ranks)", "speed-up vs first row"], rows),
    ])
    print(body)
    if args.write:
        record("ddp_scaling_cpu", body)


if __name__ == "__main__":
    main()
