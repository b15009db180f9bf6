"""metacontrast: contrastive self-supervised learning and meta-learning as one thing.

Every training batch is an episode. A method is a composition of registered components
(view generators, encoders, heads, episode builders, solvers, losses, memories,
evaluators) chosen in a hydra config; each component comes from a plugin found through
the ``metacontrast`` entry-point group.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "metacontrast"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for plugin hook implementations: ``@metacontrast.hookimpl``."""

__all__ = ["PROJECT_NAME", "__version__", "compose", "export_encoder", "hookimpl", "load_encoder", "train"]

_LAZY = {"compose": "metacontrast.api", "train": "metacontrast.api", "export_encoder": "metacontrast.api",
         "load_encoder": "metacontrast.export"}


def __getattr__(name: str):
    """``compose``, ``train``, ``export_encoder`` and ``load_encoder`` are imported on first use, so that
    ``import metacontrast`` stays light (torch is not imported by it)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metacontrast' has no attribute {name!r}")
