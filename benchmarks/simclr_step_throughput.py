"""SimCLR train-step throughput against the bare encoder's forward+backward ceiling.

Both are measured in the same process, in interleaved rounds, at the same precision and
memory layout: the ceiling is the ResNet-18 (CIFAR stem) forward and backward of the
2 x B view-images at the best forward chunking; the full step is metacontrast's train
step (views drawn and applied on the device, encoder, projection head, NT-Xent,
backward, LARS, scheduler). Run:

    .venv/bin/python benchmarks/simclr_step_throughput.py --data-root .cache/data --write

``--no-tune-malloc`` measures with glibc's default allocator behaviour (the script runs
itself again with it, in a fresh process, for the second table row).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record, seconds, train_step

from metacontrast.config import compose_config
from metacontrast.records import Batch
from metacontrast.trainer import setup


def measure(args: argparse.Namespace) -> dict:
    overrides = ["experiment=cifar10_simclr_resnet18", f"data.root={args.data_root}",
                 f"trainer.batch_size={args.batch}", f"trainer.precision={args.precision}",
                 f"trainer.tune_host_malloc={not args.no_tune_malloc}", "trainer.run_dir=/tmp/mc-bench",
                 "data.train_subset=4096", "data.test_subset=16", "trainer.progress=false"]
    best_chunks, ceilings = None, {}
    cfg = compose_config([*overrides, "trainer.forward_chunks=1"])
    run = setup(cfg)
    encoder, dev = run.model.encoder, run.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    n_views = 2 * args.batch
    images = run.data.train_images[: args.batch].to(dev)
    x = torch.cat([images, images]).float().div(255).contiguous(memory_format=torch.channels_last)

    def bare(chunks: int) -> None:
        for c in x.chunk(chunks):
            with run.autocast():
                h = encoder(c)
            h.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)

    step_fn = run.plugins.make_train_step(cfg, run.components)
    batch = Batch(images=images, index=torch.arange(args.batch, device=dev))

    def full() -> None:  # what trainer.train_steps does for one step, guards included
        train_step(run, step_fn, batch)

    chunkings = [c for c in (1, 2, 4) if args.batch * 2 % c == 0]
    for c in chunkings:
        bare(c)
    full()
    rounds = {c: [] for c in chunkings}
    full_times = {c: [] for c in chunkings}
    for _ in range(args.rounds):
        for c in chunkings:
            rounds[c].append(seconds(lambda c=c: bare(c), args.steps, sync))
            run.model.forward_chunks = c
            full_times[c].append(seconds(full, args.steps, sync))
    ceilings = {c: n_views / min(t) for c, t in rounds.items()}
    steps = {c: n_views / min(t) for c, t in full_times.items()}
    best_chunks = max(ceilings, key=ceilings.get)
    best_step_chunks = max(steps, key=steps.get)
    return {"ceiling": ceilings, "step": steps, "best_chunks": best_chunks,
            "best_step_chunks": best_step_chunks, "device": str(dev),
            "precision": args.precision, "tuned": not args.no_tune_malloc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=2, help="steps per timing")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    p.add_argument("--no-tune-malloc", action="store_true")
    p.add_argument("--json", action="store_true", help="print the raw result as JSON only")
    p.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = p.parse_args()
    result = measure(args)
    if args.json:
        print(json.dumps(result))
        return
    rows = [result]
    if not args.no_tune_malloc:
        cmd = [sys.executable, __file__, "--json", "--no-tune-malloc", f"--data-root={args.data_root}",
               f"--batch={args.batch}", f"--precision={args.precision}", f"--steps={args.steps}",
               f"--rounds={args.rounds}"]
        other = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        for key in ("ceiling", "step"):  # JSON turned the chunk counts into strings
            other[key] = {int(c): v for c, v in other[key].items()}
        rows.append(other)
    table = []
    for r in rows:
        b = r["best_chunks"]
        for c in sorted(r["ceiling"]):
            table.append([
                "on" if r["tuned"] else "off", str(c), f"{r['ceiling'][c]:.1f}", f"{r['step'][c]:.1f}",
                f"{r['step'][c] / r['ceiling'][b]:.2f}" + (" (best ceiling)" if c == b else "")])
    header = ["tune_host_malloc", "forward chunks", "bare fwd+bwd (view-img/s)",
              "full SimCLR step (view-img/s)", "step / best bare ceiling"]
    body = "\n".join([
        "### SimCLR train step vs the bare encoder (ResNet-18, CIFAR stem)",
        "",
        f"Command: `.venv/bin/python benchmarks/simclr_step_throughput.py --data-root {args.data_root} "
        f"--batch {args.batch} --write`",
        "",
        f"Machine: {machine()}. Device {rows[0]['device']}, precision {rows[0]['precision']} "
        f"(bf16 autocast where supported), channels_last, batch {args.batch} images = "
        f"{2 * args.batch} view-images per step, CIFAR-10 images, best of {args.rounds} interleaved "
        f"rounds of {args.steps} steps.",
        "",
        markdown_table(header, table),
        "",
        "The full step is the trainer's: drawing and applying SimCLR's augmentations on the "
        "device, the projection head, NT-Xent, the non-finite checks of loss and gradients, "
        "backward, clipping (off), LARS and the scheduler. Ratios compare to the best bare "
        "ceiling measured in the same process.",
    ])
    print(body)
    if args.write:
        record("simclr_step_throughput", body)


if __name__ == "__main__":
    main()
