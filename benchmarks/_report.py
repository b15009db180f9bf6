"""Shared helpers of the benchmark scripts: machine description, timing, docs update."""

from __future__ import annotations

import datetime
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# the document the scripts' --write records into (a dry run points it at a scratch copy)
DOCS = Path(os.environ.get("METACONTRAST_BENCHMARKS_DOC",
                           Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    bf16 = "with bf16" if torch.cpu._is_avx512_bf16_supported() else "no bf16: fp32 by default"
    isa = f"{torch.backends.cpu.get_cpu_capability()}, {bf16}"
    return (f"{cpu} ({isa}), {os.cpu_count()} cores visible, torch {torch.__version__} with {threads} "
            f"threads, {gpu}; {datetime.date.today().isoformat()}")


def seconds(fn: Callable[[], None], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Best-of-one mean: seconds per call over ``repeats`` calls, after the caller's warm-up."""
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def record(section: str, body: str, doc: Path = DOCS, *, placed: bool = False) -> None:
    """Replace the section between ``<!-- section:begin -->`` and ``<!-- section:end -->``
    in ``doc`` (docs/benchmarks.md by default). A new section goes at the end of the
    ``## GPU`` part when its name says ``cuda``, else at the end of the ``## CPU`` part;
    with ``placed``, the markers must already be in ``doc`` (a page written by hand)."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n## CPU\n\n## GPU\n"
    if placed and (begin not in text or end not in text):
        raise ValueError(f"{doc}: no {begin} ... {end} markers to write the {section} table between")
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        part = "\n## GPU\n" if "cuda" in section else "\n## CPU\n"
        start = text.find(part)
        following = text.find("\n## ", start + len(part)) if start >= 0 else -1
        if following < 0:
            text = text.rstrip() + "\n\n" + block + "\n"
        else:
            text = text[:following].rstrip() + "\n\n" + block + "\n" + text[following:]
    doc.write_text(text)


def train_step(run: Any, step_fn: Any, batch: Any) -> None:
    """One optimizer step as ``trainer.train_steps`` takes it (guards, backward, optimizer,
    scheduler, EMA teacher, the step's own update), without logging or checkpoints."""
    from metacontrast import trainer

    assert trainer.take_step(run, step_fn, batch)[1], "a benchmark step was skipped"


def best_of_rounds(fns: dict[str, Callable[[], None]], repeats: int | dict[str, int],
                   rounds: int) -> dict[str, float]:
    """Seconds per call of each function: one warm-up call each, then ``rounds`` rounds
    that time every function in turn (``repeats`` calls, per name when a dict); the best
    round counts. Interleaving keeps a noisy shared machine from favouring one entry."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = repeats[name] if isinstance(repeats, dict) else repeats
            times[name].append(seconds(fn, n))
    return {name: min(t) for name, t in times.items()}


def train_experiment(label: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """``metacontrast train`` in a fresh process with ``overrides`` into ``run_dir``: its
    results.json plus ``wall_s`` and ``final_loss`` (the last logged loss). Exits naming
    ``label`` with the run's stderr when it fails."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "metacontrast.cli", "train", *overrides, f"trainer.run_dir={run_dir}",
           "trainer.progress=false", "logger=[jsonl]", "trainer.resume=never"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    results["wall_s"] = time.perf_counter() - started
    results["final_loss"] = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    return results
