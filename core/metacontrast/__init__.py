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

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
