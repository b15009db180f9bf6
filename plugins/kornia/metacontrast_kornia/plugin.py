"""Registers the kornia view generators with metacontrast."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_kornia.simclr_views import SimCLRViews


@hookimpl
def metacontrast_register_view_generators() -> list[type]:
    return [SimCLRViews]
