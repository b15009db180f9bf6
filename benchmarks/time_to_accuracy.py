"""Time to accuracy of a run: its periodic evaluations against the training loop's wall-clock.

Reads a run directory of ``experiment=speedrun/simclr_knn85`` (or any run with periodic
evaluations): the ``eval/`` rows of ``metrics.jsonl`` (epoch, step, wall-clock of the
training loop, added up over resumes; both kNN protocols where the run measured them),
and ``results.json``'s ``time_to_target`` and ``schedule`` when the run finished. A run
stopped by a wall-clock cap (SIGTERM: checkpointed, resumable) is reported as far as it
got, and said to be cut before its schedule's end. Prints the table and, with ``--write``, records it in
docs/benchmarks.md; ``--report DIR`` also writes ``metacontrast report``'s Markdown and
plots (accuracy against wall-clock minutes) there.

    .venv/bin/python benchmarks/time_to_accuracy.py runs/<run> --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import machine, markdown_table, record

DEFAULT_COMMAND = "metacontrast train experiment=speedrun/simclr_knn85 data.root=.cache/data"
# both kNN protocols, where a run measured them
KNN_COLUMNS = (("knn_top1", "kNN k=200 weighted (%)"), ("knn_majority_top1", "kNN k=10 majority (%)"))


def evaluations(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if any(k.startswith("eval/") for k in r)]


def _eval_sizes(run_dir: Path, results: dict) -> tuple[str, str]:
    """The kNN bank and test sizes: results.json's, else the config's (0: all)."""
    if "train_images_for_eval" in results:
        return f"{results['train_images_for_eval']:,}", f"{results['test_images']:,}"
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    bank = int((cfg.get("evaluation") or {}).get("train_subset") or 0)
    test = int((cfg.get("data") or {}).get("test_subset") or 0)
    return (f"{bank:,}" if bank else "all"), (f"{test:,}" if test else "all")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--metric", default="knn_top1")
    p.add_argument("--command", default="", help="the command that made the run, for the record")
    p.add_argument("--cap-s", type=float, default=0.0, help="the wall-clock cap the run had (0: none)")
    p.add_argument("--report", type=Path, default=None, help="write metacontrast report's output here")
    p.add_argument("--section", default="time_to_accuracy_cuda")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    rows = evaluations(args.run_dir)
    key = f"eval/{args.metric}"
    columns = [(m, title) for m, title in KNN_COLUMNS if any(f"eval/{m}" in r for r in rows)]
    if args.metric not in dict(columns):
        columns.append((args.metric, f"{args.metric} (%)"))
    table = [[str(r["epoch"]), str(r["step"]), f"{r.get('wall_clock_s', float('nan')) / 60:.2f}",
              *(f"{100 * r[f'eval/{m}']:.2f}" if f"eval/{m}" in r else "–" for m, _ in columns)]
             for r in rows if key in r]
    results_path = args.run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    target = results.get("time_to_target")
    if target and target.get("reached"):
        minutes = target["wall_clock_s"] / 60
        verdict = (f"**{args.metric} >= {100 * target['target']:.1f}% after {minutes:.2f} minutes** of the "
                   f"training loop (epoch {target['epoch']}, step {target['step']}).")
    elif table:
        best = max(rows, key=lambda r: r.get(key, -1))
        minutes = best.get("wall_clock_s", 0) / 60
        verdict = (f"Target not reached{' within the cap' if not results else ''}: best {args.metric} "
                   f"{100 * best[key]:.2f}% at epoch {best['epoch']} ({minutes:.2f} min).")
    else:
        verdict = "No periodic evaluation was reached."
    cap = f" Wall-clock cap {args.cap_s:.0f} s per call (resumed by calling again)." if args.cap_s else ""
    if results.get("schedule"):
        from metacontrast.report import schedule_text

        schedule = f"Schedule: {schedule_text(results)}."
    else:
        schedule = "Schedule: not finished (no results.json): cut before its end by the cap."
    bank, test = _eval_sizes(args.run_dir, results)
    body = "\n".join([
        f"### Time to accuracy: {args.run_dir.name}",
        "",
        f"Command: `{args.command or DEFAULT_COMMAND}`.{cap}",
        "",
        f"Machine: {machine()}. {results.get('method', 'simclr')} / {results.get('encoder', 'resnet18')} on "
        f"CIFAR-10 (JPEG q75 copy); kNN with {bank} training images as the bank, {test} test "
        f"images; wall-clock of the training loop (steps, evaluations, checkpoints, compilation), added "
        f"up over resumes.",
        "",
        markdown_table(["epoch", "step", "wall-clock (min)", *(t for _, t in columns)], table)
        if table else "",
        "",
        f"{verdict} {schedule}",
    ])
    print(body)
    if args.report is not None:  # the plots also for a run stopped by its cap (no results.json yet)
        from metacontrast.report import RunRecord, write_report
        from metacontrast.report_plots import plot_evaluations

        args.report.mkdir(parents=True, exist_ok=True)
        if results:
            print(f"report: {write_report([args.run_dir], args.report)}")
        record_ = RunRecord(path=args.run_dir, results={"metrics": {}, **results}, rows=rows, config={})
        if plot_evaluations([record_], args.report / "accuracy_vs_wall_clock.png"):
            print(f"plot: {args.report / 'accuracy_vs_wall_clock.png'}")
    if args.write:
        record(args.section, body)


if __name__ == "__main__":
    main()
