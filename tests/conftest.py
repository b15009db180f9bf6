"""Shared fixtures: small configs, a fresh plugin manager, the real-data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
PREPARED = Path(os.environ.get("METACONTRAST_TEST_DATA", REPO / ".cache" / "data"))

# The smallest honest run: digits, Conv-4, 2 steps of 16 images on the CPU, quick eval.
TINY = [
    "experiment=digits_simclr", "trainer=debug", "trainer.resume=never",
    "eval.knn.k=5", "eval.linear.max_iter=5", "evaluation.train_subset=200",
    "data.test_subset=100", "trainer.batch_size=16", "trainer.max_steps=2", "trainer.epochs=1",
]


@pytest.fixture(scope="session")
def prepared_data() -> Path:
    """The real datasets unpacked by ../shared/data/prepare.py (done once, ~10 s)."""
    if not (PREPARED / "cifar10" / "cifar10.npz").is_file():
        if not (SHARED_DATA / "prepare.py").is_file():
            pytest.skip("../shared/data is not present")
        import subprocess
        import sys

        subprocess.run([sys.executable, str(SHARED_DATA / "prepare.py"), str(PREPARED)], check=True,
                       capture_output=True)
    return PREPARED


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return [*TINY, f"trainer.run_dir={tmp_path / 'run'}"]
