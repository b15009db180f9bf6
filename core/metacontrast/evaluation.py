"""Frozen-feature evaluation: extract features, run the configured evaluators."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from metacontrast.imageops import normalize
from metacontrast.interfaces import Evaluator
from metacontrast.phases import SILENT, Announcer
from metacontrast.records import EvalInputs


@torch.no_grad()
def extract_features(encoder: nn.Module, images: Tensor, *, mean: Sequence[float],
                     std: Sequence[float], batch_size: int,
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                     channels_last: bool = False) -> Tensor:
    """Images ``(N, C, H, W)`` (uint8, or float in [0, 1]; normalised with ``mean``/``std``)
    or float table rows ``(N, F)`` (already encoded, taken as they are) -> float32 features
    ``(N, D)`` with the encoder in eval mode (its mode is restored afterwards)."""
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size]
            x = normalize(x, mean, std) if x.dim() == 4 else x
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                out.append(encoder(x).float())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def run_evaluators(evaluators: Mapping[str, Evaluator], inputs: EvalInputs, *,
                   announce: Announcer = SILENT, label: str = "") -> dict[str, float]:
    """Every evaluator's metrics on ``inputs`` (frozen features are extracted once and
    shared). Evaluators that need the encoder are skipped when ``inputs.encoder`` is None
    (the raw-pixel baseline). Two evaluators reporting one metric name are refused.
    ``announce``/``label``: each evaluator's start and time are announced as
    ``<label>: <name> (i/n)``."""
    metrics: dict[str, float] = {}
    owner: dict[str, str] = {}
    chosen = {n: ev for n, ev in evaluators.items() if not (ev.NEEDS_ENCODER and inputs.encoder is None)}
    for i, (name, ev) in enumerate(chosen.items(), 1):
        with announce.phase(f"{label}: {name} ({i}/{len(chosen)})"):
            results = ev.run(inputs)
        for metric, value in results.items():
            if metric in owner:
                raise ValueError(f"eval.{name}: reports {metric!r}, which eval.{owner[metric]} reports "
                                 f"too; keep one of them")
            owner[metric] = name
            metrics[metric] = float(value)
    return metrics


def select_periodic(evaluators: Mapping[str, Evaluator], names: Sequence[str] | None
                    ) -> dict[str, Evaluator]:
    """The evaluators run every ``trainer.eval_every_epochs``: those ``names`` (each must
    be configured), or, when ``names`` is None, those marked ``PERIODIC``."""
    if names is None:
        return {k: ev for k, ev in evaluators.items() if ev.PERIODIC}
    unknown = [n for n in names if n not in evaluators]
    if unknown:
        from metacontrast.config import ConfigError

        raise ConfigError(f"evaluation.periodic: {', '.join(unknown)} not among the configured "
                          f"evaluators ({', '.join(evaluators) or 'none'}); add them to eval=[...]")
    return {k: evaluators[k] for k in names}


def higher_is_better(metric: str) -> bool:
    """Accuracy-like metrics; confidence-interval half-widths and standard deviations
    are not compared."""
    return not metric.endswith(("_ci95", "_std"))


def update_best(best: dict[str, dict[str, float]], metrics: Mapping[str, float], *, epoch: int,
                step: int) -> None:
    """Keep, per metric, the best value seen and the epoch/step it was seen at (ties keep
    the earlier one)."""
    for name, value in metrics.items():
        if not higher_is_better(name):
            continue
        if name not in best or value > best[name]["value"]:
            best[name] = {"value": float(value), "epoch": int(epoch), "step": int(step)}


def project_2d(x: Tensor, y: Tensor, *, max_points: int, seed: int, method: str = "tsne") -> dict[str, Any]:
    """A 2-D map of features ``x (T, D)`` for plotting, of at most ``max_points`` rows drawn
    reproducibly: ``tsne`` (scikit-learn's t-SNE, PCA-initialised, seeded: nearby
    features stay nearby) or ``pca`` (the two main directions; ``explained (2,)`` is the
    fraction of variance along each). Returns ``points (n, 2)``, ``labels (n,)``,
    ``method``."""
    x = x.float().cpu()
    y = y.cpu()
    if x.shape[0] > max_points:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        x, y = x[keep], y[keep]
    centred = x - x.mean(0)
    if method == "tsne" and x.shape[0] >= 5:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (x.shape[0] - 1) / 3))
        embedded = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                        n_jobs=1).fit_transform(centred.double().numpy())
        return {"points": torch.from_numpy(embedded).float(), "labels": y, "method": "tsne"}
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, v.shape[0])
    points = centred @ v[:k].T
    if k < 2:
        points = torch.cat([points, torch.zeros(points.shape[0], 2 - k)], dim=1)
    var = s.pow(2)
    explained = (var[:2] / var.sum().clamp_min(1e-12))
    explained = torch.cat([explained, torch.zeros(2 - explained.numel())])
    return {"points": points, "labels": y, "explained": explained, "method": "pca"}


def protocol_settings(evaluator: Any) -> dict[str, Any]:
    """An evaluator's effective settings (its config with every default filled in)."""
    config = evaluator.config
    settings = attrs.asdict(config) if attrs.has(type(config)) else {}
    return {"name": evaluator.NAME, **settings}
