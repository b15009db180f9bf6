"""The summary a person reads at the end of ``train`` and ``eval``: what ran, for how long,
each metric in percent with the protocol it comes from, and where the files are.
``results.json`` in the run directory holds the same numbers unrounded."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from metacontrast.report import is_accuracy, protocol_of, schedule_text

# the protocol settings worth a reader's attention, per evaluator setting name
_PROTOCOL_KEYS = ("k", "vote", "temperature", "solver", "epochs", "shots", "ways", "queries", "fraction",
                  "fractions", "augment")


def protocol_text(name: str, protocols: dict[str, Any]) -> str:
    """``knn (k=20, temperature=0.1)``: the evaluator a metric comes from and its main settings."""
    settings = protocols.get(name) or {}
    majority = settings.get("vote") == "majority"  # no temperature in a majority vote
    shown = [f"{k}={settings[k]}" for k in _PROTOCOL_KEYS
             if k in settings and k != "name" and not (majority and k == "temperature")]
    return f"{name} ({', '.join(shown)})" if shown else name


def format_metric(metric: str, value: float) -> str:
    return f"{100.0 * value:.1f}%" if is_accuracy(metric) else f"{value:.4g}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The summary of one ``results.json`` as lines of text."""
    run_dir = results.get("run_dir", "?")
    what = (f"{results.get('method', '?')} on {results.get('dataset', '?')}, encoder "
            f"{results.get('encoder', '?')}, {results.get('steps', '?')} steps "
            f"({results.get('epochs', '?')} epochs), global batch {results.get('global_batch', '?')}")
    where = (f"{results.get('precision', '?')} on {results.get('device', '?')} "
             f"({results.get('hardware', '?')}, {results.get('world_size', 1)} process(es))")
    lines = [f"run        {run_dir}", f"trained    {what}", f"           {where}"]
    if "schedule" in results:
        lines.append(f"schedule   {schedule_text(results)}")
    if "checkpoint" in results:
        lines.append(f"evaluated  {results['checkpoint']}")
    seconds = results.get("wall_clock_s")
    if seconds is not None:
        loop = results.get("train_loop_s")
        lines.append(f"time       {seconds:.0f} s" + (f" (training loop {loop:.0f} s)" if loop else ""))
    metrics: dict[str, dict[str, float]] = results.get("metrics") or {}
    encoders = list(metrics)
    names: list[str] = []
    for values in metrics.values():
        names += [n for n in values if n not in names]
    if names:
        protocols = results.get("protocols") or {}
        rows = [["metric", "protocol", *encoders]]
        for name in names:
            rows.append([name, protocol_text(protocol_of(name, protocols), protocols),
                         *(format_metric(name, metrics[e][name]) if name in metrics[e] else "-"
                           for e in encoders)])
        lines += ["", *_table(rows)]
        known = {"pretrained": "the trained encoder", "random_init": "the same network untrained",
                 "raw_pixels": "no network, the raw inputs"}
        said = [f"{e}: {known[e]}" for e in encoders if e in known]
        if said:
            lines.append(f"({'; '.join(said)})")
    target = results.get("time_to_target")
    if target:
        lines.append(f"target     {target}")
    lines += ["", f"results    {run_dir}/results.json (unrounded)",
              f"per step   {run_dir}/metrics.jsonl",
              f"report     metacontrast report {run_dir}   (Markdown with loss, accuracy and "
              f"projection plots)"]
    return lines


def print_summary(results: dict[str, Any], out: TextIO | None = None) -> None:
    print("\n".join(summary_lines(results)), file=out or sys.stdout)
