"""Registers the classic metric-learning losses (``loss=[triplet]``, ``loss=[npair]``;
``method=triplet|npair`` compose them with SimCLR's two-view episode)."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_classic.npair import NPairLoss
from metacontrast_classic.triplet import TripletLoss


@hookimpl
def metacontrast_register_losses() -> list[type]:
    return [TripletLoss, NPairLoss]
