"""The report's PNG plots, drawn with matplotlib's Agg backend (no display needed).

Every figure has a fixed size (``FIGSIZE`` inches at ``DPI``), so a plot's pixel size
is known: ``curves`` and ``evaluations`` are ``CURVES_SIZE``, projections
``PROJECTION_SIZE``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from metacontrast.report import RunRecord

DPI = 100
CURVES_SIZE = (1200, 360)  # pixels (width, height)
PROJECTION_SIZE = (500, 500)


def _figure(size: tuple[int, int], ncols: int = 1):
    return plt.subplots(1, ncols, figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, squeeze=False)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays what was asked
    plt.close(fig)


def plot_curves(runs: Sequence[RunRecord], path: Path) -> bool:
    """Loss, learning rate and throughput (images/s) over steps, one line per run.
    Returns False (and writes nothing) when no run logged a training row."""
    series = [(run.label, [r for r in run.rows if "loss" in r]) for run in runs]
    series = [(label, rows) for label, rows in series if rows]
    if not series:
        return False
    fig, axes = _figure(CURVES_SIZE, ncols=3)
    for (key, title), ax in zip((("loss", "training loss"), ("lr", "learning rate"),
                                 ("images_per_s", "throughput (images/s)")), axes[0], strict=True):
        for label, rows in series:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=label, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(series) <= 8:
        axes[0][0].legend(fontsize=7)
    _save(fig, path)
    return True


def plot_evaluations(runs: Sequence[RunRecord], path: Path) -> bool:
    """The periodic evaluations (``eval/<metric>`` rows of metrics.jsonl): top-1 metrics
    over epochs and, where the rows carry it, over the training loop's wall-clock minutes
    (time to accuracy), one line per run and metric. False when there are none."""
    series = []
    for run in runs:
        rows = [r for r in run.rows if any(k.startswith("eval/") for k in r)]
        names = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("top1")})
        for name in names:
            by_epoch = [(r["epoch"], 100 * r[name]) for r in rows if name in r]
            by_time = [(r["wall_clock_s"] / 60, 100 * r[name]) for r in rows
                       if name in r and "wall_clock_s" in r]
            series.append((f"{run.label}: {name[5:]}", by_epoch, by_time))
    if not series:
        return False
    timed = any(by_time for _, _, by_time in series)
    fig, axes = _figure(CURVES_SIZE, ncols=2 if timed else 1)
    panels = [(axes[0][0], 1, "epoch", "evaluations during pre-training")]
    if timed:
        panels.append((axes[0][1], 2, "training wall-clock (minutes)", "accuracy against wall-clock"))
    for ax, column, xlabel, title in panels:
        for entry in series:
            points = entry[column]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, linewidth=1.2, label=entry[0])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if len(series) <= 12:
        axes[0][0].legend(fontsize=7)
    _save(fig, path)
    return True


def plot_projection(run: RunRecord, path: Path) -> bool:
    """The run's ``test_projection.pt`` (t-SNE or PCA of test features) as a scatter
    coloured by class, the legend beside the plot. False when the run has no projection."""
    import torch

    source = run.path / "test_projection.pt"
    if not source.is_file():
        return False
    data = torch.load(source, map_location="cpu", weights_only=True)
    points, labels = data["points"], data["labels"]
    method = data.get("method", "pca")
    fig, axes = _figure(PROJECTION_SIZE)
    ax = axes[0][0]
    classes = labels.unique()
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, c in enumerate(classes.tolist()):
        mask = labels == c
        ax.scatter(points[mask, 0].numpy(), points[mask, 1].numpy(), s=5, alpha=0.75,
                   color=cmap(i % cmap.N), label=f"class {c}")
    if len(classes) <= 20:  # beside the points, never over them
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2.5, frameon=False)
    if method == "tsne":
        ax.set_title(f"{run.label}: test features, t-SNE", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        explained = data["explained"]
        ax.set_title(f"{run.label}: test features, PCA", fontsize=9)
        ax.set_xlabel(f"PC1 ({100 * float(explained[0]):.0f}% var)")
        ax.set_ylabel(f"PC2 ({100 * float(explained[1]):.0f}% var)")
    _save(fig, path)
    return True
