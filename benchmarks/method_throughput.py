"""Each method's full train step against the bare forward+backward ceiling of its own
network passes, and its memory, measured in one process.

Every method is built on the same data (ResNet-18 with CIFAR stem, CIFAR-10 images,
batch B, the method's own views, ``trainer.precision=auto`` and channels_last). A warm-up
step records, through forward hooks, every call the step makes to the online encoder and
to the teacher's encoder: input shape, dtype, whether gradients were on. The ceiling
replays exactly those calls on the bare modules (random inputs of the same shapes, same
precision and memory layout, forward only where the step had no gradient) and one
backward through the online outputs. So a method that encodes more (BYOL's teacher, CLSA's
strong views, MetAug's second forward) has that work in its ceiling too, and the ratio
``ceiling time / step time`` is the share of the step spent in the network's own passes;
the rest is views, head, solver, losses, guards, optimizer, teacher update and memory.

Memory: on CUDA, ``resident`` is what the method holds between steps (weights, optimizer
state, teacher, queue or bank) and ``step peak`` the most allocated during a step, from
the CUDA allocator, in the same table. On the CPU, ``--memory`` runs each method in a
fresh process and reports its peak resident set size over build and two steps, minus the
process's size after imports, in a table of its own. Run:

    .venv/bin/python benchmarks/method_throughput.py --data-root .cache/data --write
    .venv/bin/python benchmarks/method_throughput.py --data-root .cache/data --memory --write
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from typing import Any

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import best_of_rounds, machine, markdown_table, record, train_step

from metacontrast import trainer
from metacontrast.config import compose_config
from metacontrast.records import Batch

# the SimCLR experiment's nt_xent setting is switched off for every other method (it would
# otherwise add NT-Xent to the method's own losses)
METHODS: dict[str, list[str]] = {
    "simclr": ["method=simclr"],
    "protonet": ["method=protonet", "loss.nt_xent=null"],
    "r2d2": ["method=r2d2", "loss.nt_xent=null"],
    "byol": ["method=byol", "head.hidden_dim=2048", "head.out_dim=256", "loss.nt_xent=null"],
    "moco_v2": ["method=moco_v2", "views=moco_v2_cifar", "loss.nt_xent=null"],
    "clsa_single": ["method=clsa_single", "views=clsa_single_cifar", "loss.nt_xent=null"],
    "clsa_multi": ["method=clsa_multi", "views=clsa_multi_cifar", "loss.nt_xent=null"],
}
RESNET_BASE = ["experiment=cifar10_simclr_resnet18"]
# MetAug has its own backbone (split AlexNet) and batch (64): measured at the paper's setting
METAUG = {"metaug": ["experiment=metaug_cifar10/metaug"]}


DEFAULT_METHODS = ",".join([*METHODS, *METAUG])


def overrides(args: argparse.Namespace, name: str) -> list[str]:
    """``name`` is a method of METHODS or METAUG; ``NAME+compile`` adds ``trainer.compile=true``."""
    if name.endswith("+compile"):
        return [*overrides(args, name.removesuffix("+compile")), "trainer.compile=true"]
    if name in METAUG:
        extra, batch = METAUG[name], min(args.batch, 64)
    else:
        extra, batch = [*RESNET_BASE, *METHODS[name]], args.batch
    return [*extra, f"data.root={args.data_root}", f"trainer.batch_size={batch}",
            f"trainer.device={args.device}", "trainer.forward_chunks=1", "trainer.run_dir=/tmp/mc-bench",
            f"data.train_subset={max(2 * batch, 512)}", "data.test_subset=16", "trainer.progress=false",
            "trainer.tensorboard=false"]


def build(args: argparse.Namespace, name: str) -> tuple[Any, Any]:
    cfg = compose_config(overrides(args, name))
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    batch = Batch(images=run.data.train_images[:b].to(run.device), index=torch.arange(b, device=run.device))
    return run, (lambda: train_step(run, step_fn, batch))


def encoder_calls(run: Any, step: Any) -> list[tuple[nn.Module, torch.Size, torch.dtype, bool]]:
    """Run ``step`` once and return every call it made to the online and teacher encoders."""
    modules = [run.model.encoder]
    if run.model.teacher is not None:
        modules.append(run.model.teacher.encoder)
    calls: list[tuple[nn.Module, torch.Size, torch.dtype, bool]] = []
    handles = [m.register_forward_pre_hook(
        lambda mod, inputs: calls.append((mod, inputs[0].shape, inputs[0].dtype, torch.is_grad_enabled())))
        for m in modules]
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    return calls


def ceiling(run: Any, calls: list[tuple[nn.Module, torch.Size, torch.dtype, bool]]) -> Any:
    """The bare passes: each recorded call on a random input of its shape, then one
    backward through the outputs of the calls that had gradients."""
    fmt = torch.channels_last if run.model.channels_last else torch.contiguous_format
    inputs = [torch.randn(shape, device=run.device).to(dtype).contiguous(memory_format=fmt)
              if len(shape) == 4 else torch.randn(shape, device=run.device).to(dtype)
              for _, shape, dtype, _ in calls]

    def passes() -> None:
        outputs = []
        with run.autocast():  # one region, as the step's forward: weights are cast once
            for (module, _, _, grad), x in zip(calls, inputs, strict=True):
                with torch.set_grad_enabled(grad):
                    h = module(x)
                if grad:
                    outputs.append(h)
        if outputs:
            sum(h.float().square().mean() for h in outputs).backward()
        run.model.zero_grad(set_to_none=True)

    return passes


def online_view_images(calls: list[tuple[nn.Module, torch.Size, torch.dtype, bool]]) -> int:
    return sum(shape[0] for _, shape, _, grad in calls if grad)


def describe_calls(calls: list[tuple[nn.Module, torch.Size, torch.dtype, bool]], online: nn.Module) -> str:
    """E.g. ``512x32² fwd+bwd; 256x32² teacher fwd``."""
    parts: dict[str, int] = {}
    for module, shape, _, grad in calls:
        kind = "fwd+bwd" if grad else ("teacher fwd" if module is not online else "fwd")
        key = f"{shape[-1]}px {kind}"
        parts[key] = parts.get(key, 0) + int(shape[0])
    return ", ".join(f"{n} x {k}" for k, n in parts.items())


def peak_rss_mib() -> float:
    """This process's peak resident set size (``VmHWM``). Not ``ru_maxrss``: that
    survives ``exec`` and would report the parent's peak in a fresh subprocess."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def memory_of(args: argparse.Namespace, name: str) -> dict[str, float]:
    """CPU memory of one method in this (fresh) process: peak RSS over build + 2 steps."""
    before = current_rss_mib()
    _, step = build(args, name)
    step()
    step()
    return {"peak_mib": peak_rss_mib() - before}


def cpu_memory(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for name in names:
        cmd = [sys.executable, __file__, "--memory-of", name, f"--data-root={args.data_root}",
               f"--batch={args.memory_batch}", f"--device={args.device}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"memory of {name} failed:\n{done.stderr[-3000:]}")
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def label_of(args: argparse.Namespace, name: str) -> str:
    return f"{name} (split AlexNet, batch {min(args.batch, 64)})" if name in METAUG else name


def cpu_memory_table(args: argparse.Namespace, names: list[str]) -> None:
    memory = cpu_memory(args, names)
    rows = [[label_of(args, n), f"{memory[n]['peak_mib']:.0f}"] for n in names]
    body = "\n".join([
        "### Peak memory of every method's step (CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/method_throughput.py --data-root {args.data_root} "
        f"--memory-batch {args.memory_batch} --memory --write`",
        "",
        f"Machine: {machine()}. Each method in a fresh process: peak resident set size (`VmHWM`) over "
        f"building the run and two train steps at batch {args.memory_batch}, minus the process's size "
        "after its imports. It includes the training images held in memory (the first "
        f"{max(2 * args.memory_batch, 512)} of CIFAR-10) and the allocator's cached buffers.",
        "",
        markdown_table(["method", f"peak RSS MiB at batch {args.memory_batch}"], rows),
    ])
    print(body)
    if args.write:
        record("method_memory_cpu", body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--memory-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=1, help="steps per timing")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated; NAME+compile measures NAME with trainer.compile=true")
    p.add_argument("--memory", action="store_true",
                   help="CPU: measure each method's peak memory in a fresh process instead of timing")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.memory_of:
        print(json.dumps(memory_of(args, args.memory_of)))
        return
    names = args.methods.split(",")
    cuda = trainer.resolve_device(args.device).type == "cuda"
    if args.memory and not cuda:
        cpu_memory_table(args, names)
        return
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fns: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in names:
        allocated = torch.cuda.memory_allocated() if cuda else 0
        run, step = build(args, name)
        step()  # warm-up: lazily built state (queues, optimizer buffers)
        calls = encoder_calls(run, step)
        sync()
        dtype = trainer.resolve_precision(str(run.cfg.trainer.precision), run.device)
        info[name] = {"views": online_view_images(calls), "calls": describe_calls(calls, run.model.encoder),
                      "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")}
        if cuda:
            info[name]["resident_mib"] = (torch.cuda.memory_allocated() - allocated) / 2**20
            torch.cuda.reset_peak_memory_stats()
            step()
            sync()
            info[name]["peak_mib"] = (torch.cuda.max_memory_allocated() - allocated) / 2**20
        fns[name] = lambda step=step: (step(), sync())
        passes = ceiling(run, calls)
        fns[f"{name}/ceiling"] = lambda passes=passes: (passes(), sync())
        gc.collect()
    best = best_of_rounds(fns, args.steps, args.rounds)
    rows = []
    simclr = best.get("simclr")
    for name in names:
        t, c = best[name], best[f"{name}/ceiling"]
        rows.append([label_of(args, name), info[name]["calls"], f"{1000 * t:.0f}",
                     f"{info[name]['views'] / t:.0f}", f"{1000 * c:.0f}", f"{c / t:.2f}",
                     f"{t / simclr:.2f}" if simclr else "-"])
        if cuda:
            rows[-1].append(f"{info[name]['resident_mib']:.0f} / {info[name]['peak_mib']:.0f}")
    header = ["method", "encoder passes per step (images x size)", "full step (ms)",
              "online view-img/s", "bare passes (ms)", "ceiling / step", "step / SimCLR step"]
    if cuda:
        header.append("memory MiB: resident / step peak (CUDA allocator)")
    precision = info[names[0]]["precision"]
    compiled = any(n.endswith("+compile") for n in names)
    title = ("The encoder compiled (`trainer.compile=true`) against eager" if compiled
             else "Every method's step vs its bare network passes")
    body = "\n".join([
        f"### {title} ({'CUDA' if cuda else 'CPU'})",
        "",
        f"Command: `.venv/bin/python benchmarks/method_throughput.py --data-root {args.data_root} "
        f"--batch {args.batch} --device {args.device}"
        + ("" if args.methods == DEFAULT_METHODS else f" --methods {args.methods}") + " --write`",
        "",
        f"Machine: {machine()}. ResNet-18 (CIFAR stem) at batch {args.batch} unless named, "
        f"precision {precision}, channels_last, best of {args.rounds} interleaved rounds of "
        f"{args.steps} step(s).",
        "",
        markdown_table(header, rows),
        "",
        "The full step is the trainer's (views on the device, encoder, head, solver, losses, "
        "finite-ness guard, backward, optimizer, scheduler, EMA update, memory write). The bare "
        "passes replay the encoder calls that step made (recorded by hooks) on the bare online "
        "and teacher encoders, so `ceiling / step` near 1 means the framework adds little to "
        "the network's own cost. MetAug's step also differentiates through its first gradient "
        "(second order), which no forward+backward ceiling contains.",
    ])
    print(body)
    if args.write:  # a run with compiled variants is recorded apart from the full table
        kind = "compile_effect" if any(n.endswith("+compile") for n in names) else "method_throughput"
        record(f"{kind}_{'cuda' if cuda else 'cpu'}", body)


if __name__ == "__main__":
    main()
