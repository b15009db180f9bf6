"""Registers the kornia view generators with metacontrast: ``simclr`` (SimCLR's and MoCo
v2's augmentations) and ``weak_strong`` (CLSA's weak and strong views)."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_kornia.simclr_views import SimCLRViews
from metacontrast_kornia.strong_views import WeakStrongViews


@hookimpl
def metacontrast_register_view_generators() -> list[type]:
    return [SimCLRViews, WeakStrongViews]
