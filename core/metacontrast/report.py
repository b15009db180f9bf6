"""``metacontrast report RUN_DIR [RUN_DIR ...]``: one Markdown report of finished runs.

A run is a directory holding ``results.json`` (written by ``train`` or ``eval``); a
directory given here is searched recursively, so a multirun sweep directory stands for
all of its runs. Runs whose configs differ only in the seed form one row, with every
metric as mean +- standard deviation over the seeds (the sample std, n - 1). Each metric
column names its protocol; the protocols themselves (evaluator settings, images used)
are listed under the table. Plots (PNG, written without a display) show training curves,
the periodic evaluations over epochs, and a 2-D PCA of each run's test features.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

# config keys that do not make two runs different experiments
SEED_KEYS = (("trainer", "seed"), ("trainer", "run_dir"), ("trainer", "resume"), ("trainer", "progress"),
             ("trainer", "tensorboard"), ("data", "root"))


class ReportError(ValueError):
    """A run directory cannot be reported; the message names the path."""


@attrs.frozen
class RunRecord:
    """One run directory: ``results`` (results.json), ``rows`` (metrics.jsonl), ``config``
    (config.yaml as a mapping, empty when absent)."""

    path: Path
    results: dict[str, Any]
    rows: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def label(self) -> str:
        return self.path.name

    def group_key(self) -> str:
        """Equal for runs that differ only in their seed (and where they were written)."""
        config = json.loads(json.dumps(self.config))
        for section, key in SEED_KEYS:
            if isinstance(config.get(section), dict):
                config[section].pop(key, None)
        config.pop("logger", None)  # where results go, not what was trained
        r = self.results
        what = [r.get("method"), r.get("encoder"), r.get("dataset"), r.get("steps"), r.get("global_batch"),
                r.get("precision"), "checkpoint" in r, config]
        return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def find_runs(paths: Sequence[Path]) -> list[RunRecord]:
    """Every run under ``paths`` (a run directory or any directory above runs), in path
    order. A path without any ``results.json`` is an error naming it."""
    runs: list[RunRecord] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ReportError(f"{path}: no such directory")
        found = sorted(path.rglob("results.json")) if path.is_dir() else []
        if not found:
            raise ReportError(f"{path}: no results.json in it or below (is it a finished run?)")
        runs += [load_run(f.parent) for f in found]
    return runs


def load_run(path: Path) -> RunRecord:
    """Read one run directory; a malformed file is an error naming it."""
    try:
        results = json.loads((path / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path / 'results.json'}: unreadable ({err})") from None
    if not isinstance(results, dict) or "metrics" not in results:
        raise ReportError(f"{path / 'results.json'}: not a metacontrast results file (no 'metrics')")
    rows: list[dict[str, Any]] = []
    metrics_file = path / "metrics.jsonl"
    if metrics_file.is_file():
        for n, line in enumerate(metrics_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ReportError(f"{metrics_file}:{n}: not JSON") from None
    config: dict[str, Any] = {}
    config_file = path / "config.yaml"
    if config_file.is_file():
        config = yaml.safe_load(config_file.read_text()) or {}
    return RunRecord(path=path, results=results, rows=rows, config=config)


def group_runs(runs: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """Runs grouped by ``group_key``, groups in order of first appearance."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.group_key(), []).append(run)
    return list(groups.values())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_value(values: Sequence[float], percent: bool) -> str:
    """``71.3`` for one run, ``71.3 ± 0.4`` for several (percent for accuracies)."""
    if not values:
        return "–"
    scale = 100.0 if percent else 1.0
    mean, std = mean_std([v * scale for v in values])
    text = f"{mean:.1f}" if percent else f"{mean:.4g}"
    if len(values) > 1:
        text += f" ± {std:.1f}" if percent else f" ± {std:.2g}"
    return text


def is_accuracy(metric: str) -> bool:
    """Shown in percent: top-k accuracies, few-shot accuracies and their 95% intervals."""
    return metric.endswith(("_top1", "_top2", "_top3", "_top5", "_ci95")) or metric.startswith("fewshot_")


def protocol_of(metric: str, protocols: dict[str, Any]) -> str:
    """The evaluator config key a metric comes from (the longest key prefixing it)."""
    owners = [k for k in protocols if metric.startswith(k + "_") or metric.startswith(k)]
    if metric.startswith("fewshot_") and "few_shot" in protocols:
        owners.append("few_shot")
    return max(owners, key=len) if owners else "?"


def _metric_names(groups: Sequence[Sequence[RunRecord]], which: str) -> list[str]:
    names: list[str] = []
    for group in groups:
        for run in group:
            for name in run.results["metrics"].get(which, {}):
                if name not in names:
                    names.append(name)
    return names


def describe_protocol(key: str, settings: dict[str, Any], results: dict[str, Any]) -> str:
    """One line in the papers' terms: what is frozen, which split, which schedule."""
    name = settings.get("name", key)
    n_train, n_test = results.get("train_images_for_eval"), results.get("test_images")
    if name == "knn" or name == "knn_faiss":
        vote = (f"majority vote, k={settings.get('k')}, cosine" if settings.get("vote") == "majority" else
                f"weighted, k={settings.get('k')}, votes exp(cos/{settings.get('temperature')})")
        return (f"kNN ({vote}) on frozen features; bank = {n_train} train images, scored on {n_test} "
                f"test images")
    if name == "linear":
        solver = settings.get("solver", "lbfgs")
        how = {"lbfgs": f"full-batch L-BFGS ({settings.get('max_iter')} iterations)",
               "closed_form": "closed-form ridge",
               "sgd": (f"SGD{' Nesterov' if settings.get('nesterov') else ''} "
                       f"{settings.get('epochs')} epochs, "
                       f"batch min({settings.get('batch_size')}, train images), lr {settings.get('lr')} "
                       f"x batch/256, "
                       f"{settings.get('schedule')} decay")}[solver]
        aug = "random resized crop + flip, re-encoded every epoch" if settings.get("augment") else \
            "cached features, no augmentation"
        return (f"linear probe ({settings.get('loss', 'logistic')} loss, weight decay "
                f"{settings.get('weight_decay')}) on the frozen encoder; {how}; {aug}; trained on "
                f"{n_train} train images, scored on {n_test} test images")
    if name == "few_shot":
        return (f"{settings.get('ways')}-way {settings.get('shots')}-shot episodes "
                f"({settings.get('queries')} queries a class, {settings.get('episodes')} episodes) "
                f"on frozen features of the "
                f"{settings.get('split')} split, {settings.get('classifier')} classifier; mean and 95% CI")
    if name == "semi_supervised":
        return (f"whole encoder + linear layer fine-tuned on class-balanced {settings.get('fractions')} of "
                f"the train labels (seeded, saved), epochs {settings.get('epochs')}, SGD lr "
                f"{settings.get('lr')} x batch/256, {settings.get('schedule')} decay, weight decay "
                f"{settings.get('weight_decay')}; scored on the {n_test} test images")
    if name == "transfer":
        data = settings.get("data", {})
        return (f"transfer to {data.get('name')} by {settings.get('protocol')} "
                f"({'frozen features, L-BFGS' if settings.get('protocol') == 'linear' else 'fine-tuning'}); "
                f"grid chosen on {settings.get('val_fraction')} of its train split, refitted on all of it, "
                f"scored once on its test split")
    return json.dumps(settings, sort_keys=True)


def _group_label(group: Sequence[RunRecord]) -> str:
    return group[0].label if len(group) == 1 else f"{group[0].label} (+{len(group) - 1})"


def _best_cell(group: Sequence[RunRecord], metric: str) -> str:
    values, epochs = [], []
    for run in group:
        best = run.results.get("best_metrics", {}).get(metric)
        if best is not None:
            values.append(best["value"])
            epochs.append(best["epoch"])
    if not values:
        return "–"
    where = f"ep {epochs[0]}" if len(set(epochs)) == 1 else f"ep {min(epochs)}-{max(epochs)}"
    return f"{format_value(values, True)} ({where})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def build_markdown(groups: Sequence[Sequence[RunRecord]], plots: dict[str, list[str]]) -> str:
    """The report text; ``plots`` maps a section to PNG paths relative to the report."""
    runs = [r for g in groups for r in g]
    metrics = _metric_names(groups, "pretrained")
    lines = ["# metacontrast report", "",
             f"{len(runs)} run(s) in {len(groups)} group(s); written {time.strftime('%Y-%m-%d %H:%M')}. "
             "Accuracies in %. Several seeds of one configuration: mean ± sample std. "
             "**last**: the encoder at the end of pre-training; **best**: the best of the periodic "
             "evaluations during pre-training (and the final one), with its epoch.", ""]
    header = ["run", "seeds", "method", "encoder", "dataset", "epochs (steps)", "schedule", "batch",
              "precision", "hardware", "wall-clock"]
    protocols_all: dict[str, Any] = {}
    for g in groups:
        protocols_all.update(g[0].results.get("protocols", {}))
    header += [f"{m} [{protocol_of(m, protocols_all)}, last]" for m in metrics]
    best_metrics = [m for m in metrics if any(m in r.results.get("best_metrics", {}) for r in runs)]
    header += [f"{m} [best]" for m in best_metrics]
    targeted = any(r.results.get("time_to_target") for r in runs)
    if targeted:
        header.append("time to target")
    rows = []
    for g in groups:
        r = g[0].results
        seconds = [run.results.get("wall_clock_s", float("nan")) for run in g]
        row = [_group_label(g), ", ".join(str(run.results.get("seed", "?")) for run in g), r.get("method"),
               r.get("encoder"), r.get("dataset"), f"{r.get('epochs')} ({r.get('steps')})",
               "; ".join(dict.fromkeys(schedule_text(run.results) for run in g)), r.get("global_batch"),
               r.get("precision"), r.get("hardware", r.get("device")),
               _duration(statistics.fmean(seconds)) + (" each" if len(g) > 1 else "")]
        for m in metrics:
            vals = [run.results["metrics"].get("pretrained", {}).get(m) for run in g]
            row.append(format_value([v for v in vals if v is not None], is_accuracy(m)))
        row += [_best_cell(g, m) for m in best_metrics]
        if targeted:
            row.append(_time_to_target_cell(g))
        rows.append(row)
    lines += ["## Results", "", *markdown_table(header, rows), ""]
    baseline_rows = []
    for g in groups:
        for which in ("random_init", "raw_pixels"):
            if not any(which in run.results["metrics"] for run in g):
                continue
            row = [_group_label(g), which]
            for m in metrics:
                vals = [run.results["metrics"].get(which, {}).get(m) for run in g]
                row.append(format_value([v for v in vals if v is not None], is_accuracy(m)))
            baseline_rows.append(row)
    if baseline_rows:
        lines += ["## Baselines", "",
                  "The same protocols on the encoder before pre-training (random_init) and on "
                  "normalised raw pixels (frozen-feature protocols only).", "",
                  *markdown_table(["run", "baseline", *metrics], baseline_rows), ""]
    lines += ["## Protocols", ""]
    for g in groups:
        r = g[0].results
        lines.append(f"**{_group_label(g)}** (eval every {r.get('eval_every_epochs', 0) or '–'} epochs):")
        for key, settings in r.get("protocols", {}).items():
            lines.append(f"- `{key}`: {describe_protocol(key, settings or {}, r)}")
        details = r.get("evaluation_details") or {}
        for key, value in details.items():
            lines.append(f"- `{key}` details: `{json.dumps(value, sort_keys=True, default=str)[:400]}`")
        lines.append("")
    for section, title in (("curves", "Training curves"), ("evaluations", "Evaluations during pre-training"),
                           ("projections", "Test embeddings (2-D t-SNE or PCA, coloured by class)")):
        if plots.get(section):
            lines += [f"## {title}", "", *[f"![{Path(p).stem}]({p})" for p in plots[section]], ""]
    lines += ["## Runs", "", *[f"- `{run.path}`" for run in runs], ""]
    return "\n".join(lines)


ENDED_BY = {"target": "ended at the target", "time_limit": "ended by trainer.time_limit_s",
            None: "stopped mid-run"}


def schedule_text(results: dict[str, Any]) -> str:
    """Whether a run's schedule ran to its end, from ``results.json``'s ``schedule``: e.g.
    ``complete (300 epochs)`` or ``120 of 300 epochs (40%), ended at the target``; ``?``
    for results written before runs said so."""
    schedule = results.get("schedule")
    if not schedule:
        return "?"
    planned = schedule["planned_epochs"]
    planned_text = f"{planned:g} epochs" if planned >= 1 else f"{schedule['planned_steps']} steps"
    if schedule["completed"]:
        return f"complete ({planned_text})"
    done = schedule["fraction"] * planned
    done_text = f"{done:.3g} of {planned_text}" if planned >= 1 else f"{schedule['steps']} of {planned_text}"
    why = ENDED_BY.get(schedule["ended_by"], schedule["ended_by"])
    return f"{done_text} ({100 * schedule['fraction']:.0f}%), {why}"


def _time_to_target_cell(group: Sequence[RunRecord]) -> str:
    """E.g. ``knn_top1 >= 85.0: 7.4 min (epoch 160)``, or ``not reached (88.2 max)``."""
    cells = []
    for run in group:
        target = run.results.get("time_to_target")
        if not target:
            cells.append("–")
            continue
        goal = f"{target['metric']} >= {100 * target['target']:.1f}"
        if target.get("reached"):
            cells.append(f"{goal}: {_duration(target['wall_clock_s'])} (epoch {target['epoch']})")
        else:
            cells.append(f"{goal}: not reached")
    return "; ".join(cells)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def write_report(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Write ``report.md`` and its PNGs into ``out`` (default ``<first path>/report``);
    returns the Markdown file's path."""
    from metacontrast.report_plots import plot_curves, plot_evaluations, plot_projection

    runs = find_runs(paths)
    groups = group_runs(runs)
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, list[str]] = {"curves": [], "evaluations": [], "projections": []}
    if plot_curves(runs, out / "training_curves.png"):
        plots["curves"].append("training_curves.png")
    if plot_evaluations(runs, out / "evaluations.png"):
        plots["evaluations"].append("evaluations.png")
    for i, run in enumerate(runs):
        name = f"projection_{i:02d}_{_safe(run.label)}.png"
        if plot_projection(run, out / name):
            plots["projections"].append(name)
    path = out / "report.md"
    path.write_text(build_markdown(groups, plots))
    return path


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]
