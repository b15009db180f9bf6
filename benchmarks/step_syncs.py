"""Host-device synchronisations inside one train step of each method.

Each method is built as in ``method_throughput.py``; after a warm-up step, one step runs
under a detector and the table counts, per method, the operations that make the host wait
for the device, and names the Python lines they come from.

- On CUDA: ``torch.cuda.set_sync_debug_mode("warn")``, which warns at every operation
  that waits for the GPU (``.item()``, ``.tolist()``, ``nonzero``, boolean-mask indexing,
  pageable copies).
- On the CPU: ``metacontrast.host_reads.HostReads``, which recognises the same operations
  at the dispatcher, with the view generators selecting rows as they do on an
  accelerator (``ops.selection("mask")``); the trainer's one ``tolist`` of the step flags
  is not visible there.

    .venv/bin/python benchmarks/step_syncs.py --data-root .cache/data --write
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

import torch

from metacontrast.host_reads import HostReads
from metacontrast_kornia import ops

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record
from method_throughput import METAUG, METHODS, build


def host_reads_of_one_step(step) -> collections.Counter:
    with ops.selection("mask"), HostReads() as reads:
        step()
    return collections.Counter({k.split(" (", 1)[0]: n for k, n in reads.reads.items()})


def syncs_of_one_step(step) -> collections.Counter:
    where: collections.Counter = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            where[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return where


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=".cache/data")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--methods", default=",".join([*METHODS, *METAUG]))
    p.add_argument("--device", default="auto")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    from metacontrast.trainer import resolve_device

    cuda = resolve_device(args.device).type == "cuda"
    rows = []
    for name in args.methods.split(","):
        _, step = build(args, name)
        with ops.selection("mask"):  # warm-up on the path that is measured: constants made once
            step()
        if cuda:
            torch.cuda.synchronize()
        where = syncs_of_one_step(step) if cuda else host_reads_of_one_step(step)
        places = ", ".join(f"{k} ({n})" for k, n in where.most_common())
        rows.append([name, str(sum(where.values())), places or "-"])
    body = "\n".join([
        "### Host-device synchronisations per train step "
        + ("(CUDA)" if cuda else "(found on the CPU, as an accelerator would run the step)"),
        "",
        f"Command: `.venv/bin/python benchmarks/step_syncs.py --data-root {args.data_root} "
        f"--batch {args.batch} --device {args.device} --write`. Machine: {machine()}. Detector: "
        + ("CUDA's sync debug mode." if cuda else "`HostReads` at the dispatcher, views selecting rows "
           "by masks as on an accelerator; the trainer's one `tolist` per step is not seen here."),
        "",
        markdown_table(["method", "syncs in one step", "where (file:line (count))"], rows),
    ])
    print(body)
    if args.write:
        record(f"step_syncs_{'cuda' if cuda else 'cpu'}", body)


if __name__ == "__main__":
    main()
