"""Device placement: no module pins work to a GPU; tensors follow ``trainer.device``.

The CUDA paths run for real with ``METACONTRAST_TEST_DEVICE=cuda`` (every config's two
steps, see conftest); here, without a GPU, the source is checked for device literals and
a run's state is checked to live on the device it was given."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from metacontrast.config import compose_config
from metacontrast.trainer import setup

from .conftest import REPO, TINY

PINNED = re.compile(r"\.cuda\(|torch\.device\(\s*['\"]cuda|device\s*=\s*['\"]cuda")
# the one place that turns trainer.device into a torch.device
ALLOWED = {Path("core/metacontrast/run_setup.py")}


def _sources() -> list[Path]:
    roots = [REPO / "core", *sorted((REPO / "plugins").glob("*/metacontrast_*"))]
    return [p for root in roots for p in root.rglob("*.py") if "tests" not in p.parts]


def test_no_source_pins_tensors_to_a_gpu():
    offending = []
    for path in _sources():
        rel = path.relative_to(REPO)
        if rel in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PINNED.search(line):
                offending.append(f"{rel}:{number}: {line.strip()}")
    assert not offending, "device literals outside trainer.resolve_device:\n" + "\n".join(offending)


def test_the_pattern_catches_pinned_tensors():
    assert PINNED.search("x = x.cuda()") and PINNED.search("torch.device('cuda')")
    assert PINNED.search('torch.zeros(3, device="cuda")') and not PINNED.search("x.to(run.device)")


def test_a_run_keeps_its_state_on_the_configured_device(tmp_path):
    for method in ("simclr", "byol", "moco_v2"):
        run = setup(compose_config([*TINY, f"method={method}", f"trainer.run_dir={tmp_path / method}"]))
        tensors = [*run.model.parameters(), *run.model.buffers()]
        memory = run.components.memory
        if memory is not None:
            tensors += [t for t in memory.state_dict().values() if isinstance(t, torch.Tensor)]
        assert tensors and {t.device for t in tensors} == {run.device}, method
        assert run.generator.device == run.device
