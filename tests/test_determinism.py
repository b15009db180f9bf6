"""``trainer.deterministic``: the same seed gives bit-identical runs, another seed differs.
(Ranks sharing initial weights but drawing different views: tests/test_faults.py.)"""

from __future__ import annotations

import pytest
import torch

from metacontrast import trainer
from metacontrast.checkpoint import list_checkpoints, load_safe
from metacontrast.config import compose_config

from .conftest import TINY


def _final_weights(run_dir, *extra: str) -> dict[str, torch.Tensor]:
    trainer.fit(compose_config([*TINY, f"trainer.run_dir={run_dir}", "trainer.max_steps=3",
                                "trainer.deterministic=true", "evaluation.baselines=[]", *extra]))
    return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


@pytest.fixture(autouse=True)
def _restore_global_switch():
    yield
    trainer.use_deterministic_algorithms(False)


def test_same_seed_is_bit_identical_and_another_seed_differs(tmp_path):
    a = _final_weights(tmp_path / "a")
    assert torch.are_deterministic_algorithms_enabled()
    b = _final_weights(tmp_path / "b")
    c = _final_weights(tmp_path / "c", "trainer.seed=1")
    for name, value in a.items():
        assert torch.equal(b[name], value), name
    assert any(not torch.equal(c[n], v) for n, v in a.items() if v.is_floating_point())


def test_the_switch_sets_and_clears_the_global_modes():
    trainer.use_deterministic_algorithms(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert torch.empty(3).isnan().all()  # uninitialised memory is filled, never left to chance
    trainer.use_deterministic_algorithms(False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
