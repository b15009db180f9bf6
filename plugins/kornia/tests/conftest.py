"""Shared fixtures of the view generator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metacontrast_kornia import ops


@pytest.fixture(params=["subset", "mask"])
def row_selection(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with rows selected both ways ``ops.where_rows`` can: computing only the
    chosen rows (the CPU's way) and computing all and masking (an accelerator's way)."""
    with ops.selection(request.param):
        yield request.param
