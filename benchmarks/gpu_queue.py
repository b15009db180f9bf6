"""The GPU queue: the pending GPU measurements in order of value, and the runner that
spends a GPU session on them.

``benchmarks/gpu_queue.yaml`` lists entries, most valuable first. An entry is a training
run (``experiment`` + ``overrides``) or a ``command`` (a benchmark script that records its
own table), with the minutes it is expected to take on one H100-class GPU and a
``status``: ``pending``, ``partial`` (capped by the session, resumable while the machine
is warm), ``done``, ``failed`` (the error is kept) or ``retired``. A training entry's runs
are kept in the file (date, device, commit, minutes of the training loop, whether its
schedule completed, both kNN protocols, the linear probe, the curve); the ledger of
docs/speedrun.md and the table of docs/experiments.md are written from them, so the
queue file is the one record of every GPU attempt.

    benchmarks/gpu_queue.py list                       what is pending, with its minutes
    benchmarks/gpu_queue.py next --budget-s 480        run the first entries that fit
    benchmarks/gpu_queue.py next --budget-s 60 --dry-run --out DIR
                                                       the same path on the CPU, shrunk, on
                                                       scratch copies of the queue and docs
    benchmarks/gpu_queue.py requeue ID [ID ...]        measure an entry again
    benchmarks/gpu_queue.py stale                      requeue the command entries whose
                                                       watched files changed since measured
    benchmarks/gpu_queue.py render                     write the docs' tables from the queue

``benchmarks/gpu_session.sh --next`` installs the project on a fresh GPU machine, checks
the GPU with a short smoke test, then calls ``next`` with what is left of its budget.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, record

REPO = Path(__file__).resolve().parent.parent
QUEUE = REPO / "benchmarks" / "gpu_queue.yaml"
DOCS = REPO / "docs"
HEADER = """\
# The GPU queue (benchmarks/gpu_queue.py): pending GPU measurements, most valuable first.
# `benchmarks/gpu_session.sh --next` runs the first entries that fit in a session and
# writes their runs back here; docs/speedrun.md and docs/experiments.md are rendered from
# them (`benchmarks/gpu_queue.py render`). minutes: expected on one H100-class GPU,
# updated from each measurement. status: pending | partial | done | failed | retired.
"""
STATUSES = ("pending", "partial", "done", "failed", "retired")
KINDS = ("train", "command")
RECORDS = ("speedrun", "methods", "benchmarks")
STARTUP_S = 45  # a training process: imports, data, model, capture warm-up
MAX_CALL_S = 540  # the longest useful call (the device tool allows 600 s a command)
MIN_PARTIAL_S = 240  # the least time worth giving a run that needs more than one call
DRY_ENTRY_S = 30  # a shrunk entry on the CPU
# a training entry shrunk for the CPU: a Conv-4 on 512 CIFAR-10 images, two epochs, eager
DRY_OVERRIDES = ["encoder=conv4", "encoder.pool=avg", "data.train_subset=512", "data.test_subset=256",
                 "evaluation.train_subset=512", "evaluation.batch_size=256", "trainer.batch_size=64",
                 "trainer.epochs=2", "trainer.eval_every_epochs=1", "trainer.cuda_graphs=false",
                 "trainer.compile=off", "trainer.device=cpu", "trainer.checkpoint_every=0",
                 "eval.linear.max_iter=20"]


class QueueError(ValueError):
    """The queue file is malformed; the message names the entry and the key."""


# --- the file -------------------------------------------------------------------------------

def load(path: Path = QUEUE) -> list[dict[str, Any]]:
    """The entries of the queue file, checked."""
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise QueueError(f"{path}: a list of entries expected")
    seen: set[str] = set()
    for n, e in enumerate(entries):
        where = f"{path}: entry {n} ({e.get('id', '?') if isinstance(e, dict) else e!r})"
        if not isinstance(e, dict) or not e.get("id"):
            raise QueueError(f"{where}: needs an id")
        if e["id"] in seen:
            raise QueueError(f"{where}: the id is used twice")
        seen.add(e["id"])
        for key, allowed in (("kind", KINDS), ("status", STATUSES), ("record", RECORDS)):
            if e.get(key) not in allowed:
                raise QueueError(f"{where}: {key} must be one of {', '.join(allowed)}, got {e.get(key)!r}")
        if e["kind"] == "train" and not e.get("experiment"):
            raise QueueError(f"{where}: a train entry needs an experiment")
        if e["kind"] == "command" and not e.get("command"):
            raise QueueError(f"{where}: a command entry needs a command")
        if not isinstance(e.get("minutes"), (int, float)) or e["minutes"] <= 0:
            raise QueueError(f"{where}: minutes must be a positive number")
        e.setdefault("runs", [])
    return entries


def save(entries: list[dict[str, Any]], path: Path = QUEUE) -> None:
    """Write the queue (whole or not at all)."""
    text = HEADER + yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=110,
                                   default_flow_style=None)  # a curve's points inline
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- what to run ----------------------------------------------------------------------------

def needed_s(entry: dict[str, Any], dry: bool) -> float:
    """Seconds an entry is expected to take from where it stands."""
    if dry:
        return DRY_ENTRY_S
    left = 1.0 - float((entry.get("partial") or {}).get("fraction", 0.0))
    startup = STARTUP_S if entry["kind"] == "train" else 15
    return startup + 60 * float(entry["minutes"]) * max(left, 0.05) * 1.1


def plan(entries: Sequence[dict[str, Any]], budget_s: float, dry: bool = False) -> list[str]:
    """The ids of the entries to run in a call of ``budget_s`` seconds, in queue order:
    every pending or partial entry that fits in what is left; and the head of the queue,
    when it is a training run that no call can hold (more than ``MAX_CALL_S``), capped at
    what is left if at least ``MIN_PARTIAL_S`` is (it checkpoints and resumes in the next
    call). A long run further down waits until the entries before it are done."""
    chosen, left = [], float(budget_s)
    waiting = [e for e in entries if e["status"] in ("pending", "partial")]
    for n, e in enumerate(waiting):
        need = needed_s(e, dry)
        if need <= left:
            chosen.append(e["id"])
            left -= need
        elif n == 0 and e["kind"] == "train" and need > MAX_CALL_S and left >= MIN_PARTIAL_S and not dry:
            chosen.append(e["id"])
            left = 0.0
    return chosen


def stale(entries: Sequence[dict[str, Any]], changed: Callable[[str, list[str]], bool]) -> list[str]:
    """Requeue the done command entries whose ``watch`` paths ``changed(since, paths)``
    after their ``measured_commit``; returns their ids."""
    out = []
    for e in entries:
        watched = e["status"] == "done" and e.get("watch") and e.get("measured_commit")
        if watched and changed(str(e["measured_commit"]), list(e["watch"])):
            e["status"] = "pending"
            out.append(e["id"])
    return out


def git_changed(since: str, paths: list[str]) -> bool:
    """Whether ``paths`` differ between commit ``since`` and HEAD (an unknown commit counts
    as changed)."""
    done = subprocess.run(["git", "diff", "--quiet", since, "HEAD", "--", *paths], cwd=REPO,
                          capture_output=True)
    return done.returncode != 0


def current_commit() -> str:
    """The commit the session runs: git's HEAD, with ``+`` when the tracked files differ
    from it; on the GPU machine, which gets the working tree without .git, the one
    gpu_prepare.sh wrote into ``.gpu/commit``."""
    if (REPO / ".git").exists():
        try:
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                  text=True, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True).stdout.strip()
            return head + ("+" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            pass
    marker = REPO / ".gpu" / "commit"
    return marker.read_text().strip() if marker.is_file() else "unknown"


# --- running an entry -----------------------------------------------------------------------

def run_capped(cmd: list[str] | str, cap_s: float, log: Path, env: dict[str, str]) -> int:
    """Run ``cmd`` from the repository root with its output appended to ``log``; past
    ``cap_s`` seconds it gets SIGTERM (a training run checkpoints and exits 143), then
    SIGKILL 60 s later. Returns the exit status (-9 when killed)."""
    with log.open("a") as sink:
        sink.write(f"\n$ {cmd if isinstance(cmd, str) else ' '.join(cmd)}\n")
        sink.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                shell=isinstance(cmd, str), start_new_session=True)
        try:
            return proc.wait(timeout=max(cap_s, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()


def train_command(entry: dict[str, Any], run_dir: Path, data_root: str, python: str, dry: bool) -> list[str]:
    return [python, "-m", "metacontrast.cli", "train", f"experiment={entry['experiment']}",
            f"data.root={data_root}", f"trainer.run_dir={run_dir}", "trainer.progress=false",
            "logger=[jsonl]", *entry.get("overrides", []), *(DRY_OVERRIDES if dry else [])]


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve(rows: Sequence[dict[str, Any]]) -> list[list[float]]:
    """``[epoch, minutes of training loop, kNN k=200 weighted %, kNN k=10 majority %]`` of
    every periodic evaluation (None where a protocol did not run)."""
    out = []
    for r in rows:
        if "eval/knn_top1" in r or "eval/knn_majority_top1" in r:
            out.append([r["epoch"], round(r.get("wall_clock_s", 0.0) / 60, 2),
                        *(round(100 * r[k], 2) if k in r else None
                          for k in ("eval/knn_top1", "eval/knn_majority_top1"))])
    return out


def describe(run_dir: Path, results: dict[str, Any] | None) -> dict[str, Any]:
    """What a run directory shows: the final metrics and schedule when finished, else how
    far it got (from metrics.jsonl)."""
    rows = _rows(run_dir)
    out: dict[str, Any] = {"curve": curve(rows)}
    if results:
        from metacontrast.report import schedule_text

        final = results["metrics"].get("pretrained", {})
        out.update({
            "minutes": round(results.get("train_loop_s", 0.0) / 60, 2),
            "final_evaluation_s": results.get("final_evaluation_s"),
            "epochs": results.get("epochs"),
            "schedule": schedule_text(results),
            "schedule_completed": bool((results.get("schedule") or {}).get("completed")),
            "device": results.get("hardware", "?"),
            **{k: round(100 * final[k], 2) for k in ("knn_top1", "knn_majority_top1", "linear_top1")
               if k in final},
            "best": {k: {"value": round(100 * v["value"], 2), "epoch": v["epoch"]}
                     for k, v in (results.get("best_metrics") or {}).items() if k.endswith("_top1")},
        })
        target = results.get("time_to_target")
        if target:
            out["target"] = (f"{target['metric']} >= {100 * target['target']:.1f}%: "
                             + (f"{target['wall_clock_s'] / 60:.2f} min (epoch {target['epoch']})"
                                if target.get("reached") else "not reached"))
        return out
    last = rows[-1] if rows else {}
    out.update({"minutes": round(last.get("wall_clock_s", 0.0) / 60, 2), "epochs": last.get("epoch", 0)})
    return out


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return machine().split(";")[0]


def run_entry(entry: dict[str, Any], cap_s: float, *, workdir: Path, data_root: str, dry: bool,
              log: Path, env: dict[str, str], python: str, docs: Path) -> None:
    """Run one entry under ``cap_s`` and record the outcome in it (status, runs)."""
    started = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = current_commit()
    if entry["kind"] == "command":
        cmd = entry["command"].format(python=python, data=data_root, device="cpu" if dry else "cuda")
        code = run_capped(cmd + (" " + entry.get("dry", "") if dry else ""), cap_s, log, env)
        entry["status"] = "done" if code == 0 else "failed"
        entry["measured_commit"] = commit
        entry["runs"].append({"date": date, "device": device_name(), "commit": commit, "exit": code,
                              "minutes": round((time.time() - started) / 60, 2)})
        return
    partial = entry.get("partial") or {}
    run_dir = Path(partial["run_dir"]) if partial and Path(partial["run_dir"]).is_dir() else None
    if partial and run_dir is None:  # its machine went back before the resume: that attempt ends here
        for r in entry["runs"]:
            if r.get("run_dir") == partial["run_dir"]:
                r["status"] = f"cut at epoch {r.get('epochs', 0)}: the machine went back before a resume"
        entry.pop("partial")
    if run_dir is None:  # a fresh attempt
        run_dir = workdir / f"{entry['id']}-{time.strftime('%Y%m%d-%H%M%S')}"
        entry["runs"].append({"date": date, "device": device_name(), "commit": commit,
                              "run_dir": str(run_dir), "status": "started"})
    record = next(r for r in reversed(entry["runs"]) if r.get("run_dir") == str(run_dir))
    command = train_command(entry, run_dir, data_root, python, dry)
    record["command"] = " ".join(["metacontrast", *(a for a in command[3:] if not a.startswith(
        ("trainer.run_dir=", "trainer.progress=", "logger=")))])
    code = run_capped(command, cap_s, log, env)
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    record.update(describe(run_dir, results))
    record["exit"] = code
    if results is not None:
        record["status"] = "done"
        entry["status"] = "done"
        entry.pop("partial", None)
        if not dry and record.get("minutes"):
            entry["minutes"] = round(record["minutes"] + STARTUP_S / 60, 1)  # the next estimate
        _plot(run_dir, docs / "speedrun" / f"{run_dir.name}.png", record)
    elif code in (143, -signal.SIGTERM) and (run_dir / "checkpoints").is_dir():
        planned = _planned_epochs(run_dir)
        record["status"] = f"capped at epoch {record.get('epochs', 0)}, resumable"
        entry["status"] = "partial"
        fraction = min(record.get("epochs", 0) / planned, 0.95) if planned else 0.0
        entry["partial"] = {"run_dir": str(run_dir), "fraction": round(fraction, 3)}
    else:
        record["status"] = "failed"
        entry["status"] = "failed"
        record["error"] = _tail(log)
        entry.pop("partial", None)


def _planned_epochs(run_dir: Path) -> int:
    config = run_dir / "config.yaml"
    if not config.is_file():
        return 0
    return int((yaml.safe_load(config.read_text()).get("trainer") or {}).get("epochs") or 0)


def _tail(log: Path, lines: int = 6) -> str:
    text = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return "\n".join(text[-lines:])


def _plot(run_dir: Path, png: Path, record: dict[str, Any]) -> None:
    """The accuracy-against-wall-clock curve of a finished run, next to the docs."""
    from metacontrast.report import load_run
    from metacontrast.report_plots import plot_evaluations

    png.parent.mkdir(parents=True, exist_ok=True)
    if plot_evaluations([load_run(run_dir)], png):
        record["plot"] = f"speedrun/{png.name}"


# --- the docs -------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _runs(entries: Sequence[dict[str, Any]], record: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(e, r) for e in entries if e["record"] == record for r in e["runs"]]


def ledger(entries: Sequence[dict[str, Any]]) -> str:
    """docs/speedrun.md's ledger: every attempt of every speedrun entry, oldest first, then
    each attempt's curve and command."""
    runs = sorted(_runs(entries, "speedrun"), key=lambda er: er[1].get("date", ""))
    header = ["date", "device", "commit", "attempt", "minutes (training loop)", "final evaluation (s)",
              "schedule", "kNN k=10 majority (%)", "kNN k=200 weighted (%)", "linear (%)", "target",
              "outcome"]
    rows = [[r.get("date", "?"), r.get("device", "?"), f"`{r.get('commit', '?')}`",
             f"`{e['id']}`" + (f" ([curve]({r['plot']}))" if r.get("plot") else ""), _cell(r.get("minutes")),
             _cell(r.get("final_evaluation_s")),
             r.get("schedule") or r.get("status", "?"), _cell(r.get("knn_majority_top1")),
             _cell(r.get("knn_top1")), _cell(r.get("linear_top1")), r.get("target", "–"),
             r.get("status", "?")] for e, r in runs]
    lines = [markdown_table(header, rows or [["–"] * 3 + ["no GPU attempt recorded yet"] + ["–"] * 8])]
    curves = [f"- `{e['id']}`, {r.get('date', '?')}: "
              + ", ".join(f"{c[0]}: {_cell(c[3])} / {_cell(c[2])} ({c[1]:.1f} min)" for c in r["curve"])
              for e, r in runs if r.get("curve")]
    if curves:
        lines += ["", "Curves, every periodic evaluation as epoch: k=10 / k=200 % (minutes of training "
                  "loop):", "", *curves]
    commands = dict.fromkeys(f"- `{e['id']}`: `{r['command']}`" for e, r in runs if r.get("command"))
    if commands:
        lines += ["", "Commands:", "", *commands]
    return "\n".join(lines)


def methods_table(entries: Sequence[dict[str, Any]]) -> str:
    """docs/experiments.md's table: each method's 200-epoch CIFAR-10 row beside its
    published figure; pending rows say so."""
    header = ["method", "experiment", "published (source, protocol, epochs)", "kNN k=200 weighted (%)",
              "kNN k=10 majority (%)", "linear (%)", "schedule", "minutes (training loop)",
              "device, date, commit"]
    rows = []
    for e in entries:
        if e["record"] != "methods":
            continue
        first = [e["title"], f"`{e['experiment']}`", e.get("published", "–")]
        done = [r for r in e["runs"] if r.get("status") == "done"]
        if not done:
            state = "pending" if e["status"] in ("pending", "partial") else e["status"]
            rows.append([*first, state, "", "", "", f"~{e['minutes']:g} expected", ""])
            continue
        r = done[-1]
        rows.append([*first, _cell(r.get("knn_top1")), _cell(r.get("knn_majority_top1")),
                     _cell(r.get("linear_top1")), r.get("schedule", "?"), _cell(r.get("minutes")),
                     f"{r.get('device', '?')}, {r.get('date', '?')}, `{r.get('commit', '?')}`"])
    return markdown_table(header, rows)


def pending_table(entries: Sequence[dict[str, Any]]) -> str:
    """What the queue holds, in order."""
    waiting = [e for e in entries if e["status"] not in ("done", "retired")]
    if not waiting:
        return "The queue is empty."
    rows = []
    for n, e in enumerate(waiting, 1):
        what = (f"`experiment={e['experiment']}` {' '.join(e.get('overrides', []))}" if e["kind"] == "train"
                else f"`{e['command'].replace('{python} ', '').split()[0]}`")
        rows.append([str(n), f"`{e['id']}`", f"{e['title']}: {what.strip()}", e["kind"], f"{e['minutes']:g}",
                     e["status"]])
    return markdown_table(["#", "entry", "what", "kind", "expected minutes (H100)", "status"], rows)


def render(entries: Sequence[dict[str, Any]], docs: Path) -> None:
    """Write the queue's tables into docs/speedrun.md and docs/experiments.md."""
    record("speedrun_ledger", ledger(entries), docs / "speedrun.md", placed=True)
    record("speedrun_queue", pending_table(entries), docs / "speedrun.md", placed=True)
    record("methods_at_scale", methods_table(entries), docs / "experiments.md", placed=True)


# --- the commands ---------------------------------------------------------------------------

def cmd_next(args: argparse.Namespace) -> int:
    started = time.time()
    queue, docs = args.queue, args.docs
    entries = load(queue)
    chosen = plan(entries, args.budget_s, args.dry_run)
    if not chosen:
        print(f"gpu_queue: nothing fits in {args.budget_s:.0f} s "
              f"({sum(e['status'] in ('pending', 'partial') for e in entries)} pending)")
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = Path(args.out) / "queue.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", METACONTRAST_BENCHMARKS_DOC=str(docs / "benchmarks.md"))
    by_id, tried = {e["id"]: e for e in entries}, set()
    while chosen:  # planned again after each entry, from the time really left
        entry_id = chosen[0]
        tried.add(entry_id)
        left = args.budget_s - (time.time() - started)
        entry = by_id[entry_id]
        print(f"gpu_queue: {entry_id} ({entry['kind']}, ~{entry['minutes']} min on an H100), "
              f"cap {left - 5:.0f} s", flush=True)
        t0 = time.time()
        run_entry(entry, left - 5, workdir=workdir, data_root=args.data_root, dry=args.dry_run, log=log,
                  env=env, python=args.python, docs=docs)
        print(f"gpu_queue: {entry_id}: {entry['status']} after {time.time() - t0:.0f} s", flush=True)
        save(entries, queue)
        render(entries, docs)
        left = args.budget_s - (time.time() - started)
        chosen = plan([e for e in entries if e["id"] not in tried], left, args.dry_run)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--queue", type=Path, default=QUEUE,
                   help="the queue file (default benchmarks/gpu_queue.yaml)")
    p.add_argument("--docs", type=Path, default=DOCS, help="the docs directory to write (default docs/)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the pending entries")
    nxt = sub.add_parser("next", help="run the first entries that fit in --budget-s")
    nxt.add_argument("--budget-s", type=float, required=True)
    nxt.add_argument("--dry-run", action="store_true", help="on the CPU, each entry shrunk")
    nxt.add_argument("--data-root", default=".cache/data")
    nxt.add_argument("--workdir", default="/tmp/mc-queue", help="where the runs' directories go")
    nxt.add_argument("--out", default=os.environ.get("OUT", "/tmp/mc-gpu-session"), help="where the log goes")
    nxt.add_argument("--python", default=sys.executable)
    req = sub.add_parser("requeue", help="mark entries pending")
    req.add_argument("ids", nargs="+")
    sub.add_parser("stale", help="requeue command entries whose watched files changed since measured")
    sub.add_parser("render", help="write the docs' tables from the queue")
    args = p.parse_args(argv)
    try:
        entries = load(args.queue)
    except (OSError, yaml.YAMLError, QueueError) as err:
        print(f"gpu_queue: {err}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, entries)
    except (OSError, ValueError) as err:  # an unwritable docs directory, a page without its markers
        print(f"gpu_queue: {err}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, entries: list[dict[str, Any]]) -> int:
    if args.command == "list":
        print(pending_table(entries))
    elif args.command == "next":
        return cmd_next(args)
    elif args.command == "requeue":
        unknown = [i for i in args.ids if i not in {e["id"] for e in entries}]
        if unknown:
            print(f"gpu_queue: no entry {', '.join(unknown)}; entries: {', '.join(e['id'] for e in entries)}",
                  file=sys.stderr)
            return 2
        for e in entries:
            if e["id"] in args.ids:
                e["status"] = "pending"
                e.pop("partial", None)
        save(entries, args.queue)
        render(entries, args.docs)
    elif args.command == "stale":
        ids = stale(entries, git_changed)
        print(f"gpu_queue: requeued {', '.join(ids)}" if ids else "gpu_queue: nothing is stale")
        save(entries, args.queue)
        render(entries, args.docs)
    elif args.command == "render":
        render(entries, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
