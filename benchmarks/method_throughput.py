"""Each method's full train step against the bare forward+backward ceiling of its own
network passes, and its memory, measured in one process.

Every method is built on the same data (ResNet-18 with CIFAR stem, CIFAR-10 images,
batch B, the method's own views, ``trainer.precision=auto`` and channels_last). A warm-up
step records, through forward hooks, every call the step makes to the online encoder and
to the teacher's encoder: input shape, dtype, whether gradients were on. The ceiling
replays exactly those calls on the bare modules (random inputs of the same shapes, same
precision and memory layout, forward only where the step had no gradient) and one
backward from gradients of ones through the online outputs (``metacontrast.launches.
BarePasses``, as the launch counter replays them). So a method that encodes more (BYOL's teacher, CLSA's
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
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import best_of_rounds, machine, markdown_table, record, train_step

from metacontrast import trainer
from metacontrast.config import ConfigError, compose_config
from metacontrast.host_reads import HostReads
from metacontrast.launches import BarePasses, EncoderCall, recording_encoder_calls
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


VARIANTS = {"eager": "", "graphs": "+graphs", "compiled": "+compile", "compiled+graphs": "+compile+graphs"}


def overrides(args: argparse.Namespace, name: str) -> list[str]:
    """``name`` is a method of METHODS or METAUG; ``+compile`` adds ``trainer.compile=step``,
    ``+graphs`` ``trainer.cuda_graphs=true`` (a GPU only)."""
    if name.endswith("+graphs"):
        return [*overrides(args, name.removesuffix("+graphs")), "trainer.cuda_graphs=true"]
    if name.endswith("+compile"):
        backend = getattr(args, "compile_backend", "inductor")
        return [*overrides(args, name.removesuffix("+compile")), "trainer.compile=step",
                f"trainer.compile_backend={backend}"]
    if name in METAUG:
        extra, batch = METAUG[name], min(args.batch, 64)
    else:
        extra, batch = [*RESNET_BASE, *METHODS[name]], args.batch
    return [*extra, f"data.root={args.data_root}", f"trainer.batch_size={batch}",
            f"trainer.device={args.device}", "trainer.forward_chunks=1", "trainer.run_dir=/tmp/mc-bench",
            f"data.train_subset={max(2 * batch, 512)}", "data.test_subset=16", "trainer.progress=false",
            "logger=[jsonl]"]


def build(args: argparse.Namespace, name: str) -> tuple[Any, Any]:
    cfg = compose_config(overrides(args, name))
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    batch = Batch(images=run.data.train_images[:b].to(run.device), index=torch.arange(b, device=run.device))
    if not cfg.trainer.cuda_graphs:
        return run, (lambda: train_step(run, step_fn, batch))
    from metacontrast.graphs import GraphedStep

    graphed = GraphedStep(run, step_fn)

    def step() -> None:
        if graphed.ready:
            graphed.step(batch)
            return
        with graphed.warming_up():
            train_step(run, step_fn, batch)
        graphed.eager_step_done(batch)

    for _ in range(int(cfg.trainer.cuda_graph_warmup)):  # eager warm-up steps, then the capture
        step()
    return run, step


def encoder_calls(run: Any, step: Any) -> list[EncoderCall]:
    """Run ``step`` once and return every call it made to the online and teacher encoders."""
    with recording_encoder_calls(run) as calls:
        step()
    return calls


def ceiling(run: Any, calls: list[EncoderCall], how: str = "eager") -> Any:
    """The bare passes of ``calls`` (``BarePasses``): ``eager``; ``compiled`` (each encoder
    through ``torch.compile``); ``graphs`` (the eager passes captured as one CUDA graph;
    ``None`` when the passes make the host wait, e.g. MetAug's colour conversion)."""
    passes = BarePasses(run, calls, wrap=(lambda m: torch.compile(m, dynamic=False)) if how == "compiled"
                        else None)
    if how != "graphs":
        return passes
    with HostReads() as reads:  # a pass that makes the host wait cannot be captured
        passes()
    if reads.total:
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            passes()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        passes()
    return graph.replay


def online_view_images(calls: list[EncoderCall]) -> int:
    return sum(c.shape[0] for c in calls if c.grad)


def describe_calls(calls: list[EncoderCall], online: nn.Module) -> str:
    """E.g. ``512x32² fwd+bwd; 256x32² teacher fwd``."""
    parts: dict[str, int] = {}
    for c in calls:
        kind = "fwd+bwd" if c.grad else ("teacher fwd" if c.module is not online else "fwd")
        key = f"{c.shape[-1]}px {kind}"
        parts[key] = parts.get(key, 0) + int(c.shape[0])
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
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated")
    p.add_argument("--variants", default="eager",
                   help="comma-separated: eager, graphs (trainer.cuda_graphs=true, a GPU only), compiled "
                        "(trainer.compile=step), compiled+graphs")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--section", default="", help="the docs section --write replaces (default by device)")
    p.add_argument("--json", default="", help="also write the step times (ms) per method and variant here")
    p.add_argument("--memory", action="store_true",
                   help="CPU: measure each method's peak memory in a fresh process instead of timing")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.memory_of:
        print(json.dumps(memory_of(args, args.memory_of)))
        return
    methods = args.methods.split(",")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; available: {', '.join(VARIANTS)}")
    cuda = trainer.resolve_device(args.device).type == "cuda"
    if args.memory and not cuda:
        cpu_memory_table(args, methods)
        return
    if any("graphs" in v for v in variants) and not cuda:
        raise SystemExit("--variants graphs: CUDA graphs need a GPU (--device cuda)")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fns: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    for method in methods:
        allocated = torch.cuda.memory_allocated() if cuda else 0
        run, step = build(args, method)
        step()  # warm-up: lazily built state (queues, optimizer buffers)
        calls = encoder_calls(run, step)
        sync()
        dtype = trainer.resolve_precision(str(run.cfg.trainer.precision), run.device)
        info[method] = {"views": online_view_images(calls), "calls": describe_calls(calls, run.model.encoder),
                        "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")}
        if cuda:
            info[method]["resident_mib"] = (torch.cuda.memory_allocated() - allocated) / 2**20
            torch.cuda.reset_peak_memory_stats()
            step()
            sync()
            info[method]["peak_mib"] = (torch.cuda.max_memory_allocated() - allocated) / 2**20
        fns[f"{method}/eager"] = lambda step=step: (step(), sync())
        ceilings = ["eager"] + [how for how in ("compiled", "graphs") if any(how in v for v in variants)]
        for how in ceilings:
            passes = ceiling(run, calls, how)
            if passes is None:
                continue
            fns[f"{method}/bare {how}"] = lambda passes=passes: (passes(), sync())
        for variant in variants:
            if variant == "eager":
                continue
            try:
                _, variant_step = build(args, method + VARIANTS[variant])
                variant_step()
            except ConfigError as err:  # e.g. a step that cannot be captured
                refused[f"{method}/{variant}"] = str(err)
                continue
            fns[f"{method}/{variant}"] = lambda step=variant_step: (step(), sync())
        gc.collect()
    best = best_of_rounds(fns, args.steps, args.rounds)
    rows = []
    simclr = best.get("simclr/eager")
    for method in methods:
        bare = {k.split("/bare ", 1)[1]: v for k, v in best.items() if k.startswith(f"{method}/bare ")}
        how, c = min(bare.items(), key=lambda kv: kv[1])
        for variant in variants:
            key = f"{method}/{variant}"
            if key in refused:
                rows.append([label_of(args, method), info[method]["calls"], variant,
                             f"refused: {refused[key][:120]}", "-", f"{1000 * c:.1f} ({how})", "-", "-"])
                continue
            t = best[key]
            rows.append([label_of(args, method), info[method]["calls"], variant, f"{1000 * t:.1f}",
                         f"{info[method]['views'] / t:.0f}", f"{1000 * c:.1f} ({how})", f"{c / t:.2f}",
                         f"{t / simclr:.2f}" if simclr else "-"])
            if cuda and variant == "eager":
                rows[-1].append(f"{info[method]['resident_mib']:.0f} / {info[method]['peak_mib']:.0f}")
            elif cuda:
                rows[-1].append("")
    header = ["method", "encoder passes per step (images x size)", "variant", "full step (ms)",
              "online view-img/s", "best bare passes (ms, variant)", "ceiling / step",
              "step / SimCLR eager step"]
    if cuda:
        header.append("memory MiB: resident / step peak (CUDA allocator, eager)")
    precision = info[methods[0]]["precision"]
    backend = "" if args.compile_backend == "inductor" else f" --compile-backend {args.compile_backend}"
    variant_text = "" if variants == ["eager"] else f" --variants {args.variants}{backend}"
    method_text = "" if args.methods == DEFAULT_METHODS else f" --methods {args.methods}"
    body = "\n".join([
        f"### Every method's step vs its bare network passes ({'CUDA' if cuda else 'CPU'})",
        "",
        f"Command: `.venv/bin/python benchmarks/method_throughput.py --data-root {args.data_root} "
        f"--batch {args.batch} --device {args.device}{method_text}{variant_text} --write`",
        "",
        f"Machine: {machine()}. ResNet-18 (CIFAR stem) at batch {args.batch} unless named, "
        f"precision {precision}, channels_last, best of {args.rounds} interleaved rounds of "
        f"{args.steps} step(s). Variants: eager; graphs (`trainer.cuda_graphs=true`); compiled "
        f"(`trainer.compile=step`, backend {args.compile_backend}); compiled+graphs (both).",
        "",
        markdown_table(header, rows),
        "",
        "The full step is the trainer's (views on the device, encoder, head, solver, losses, "
        "finite-ness guard, backward, optimizer, scheduler, EMA update, memory write). The bare "
        "passes replay the encoder calls that step made (recorded by hooks) on the bare online "
        "and teacher encoders, eager, compiled and (on a GPU) captured as one CUDA graph, in the "
        "variants the run measures; the ceiling is the fastest of them, so `ceiling / step` near 1 "
        "means the framework adds little to the network's own best cost. MetAug's step also "
        "differentiates through its first gradient (second order), which no forward+backward "
        "ceiling contains.",
    ])
    print(body)
    if args.json:
        times = {key: round(1000 * t, 3) for key, t in best.items()}
        Path(args.json).write_text(json.dumps({"times_ms": times, "refused": refused}, indent=2))
    if args.write:
        section = args.section or (f"method_throughput_{'cuda' if cuda else 'cpu'}" if variants == ["eager"]
                                   else f"compile_effect_{'cuda' if cuda else 'cpu'}")
        record(section, body)


if __name__ == "__main__":
    main()
