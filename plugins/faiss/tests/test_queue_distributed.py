"""Under 2 gloo processes the queue receives the keys of every rank, in rank order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HANG_GUARD_S = 900  # generous: a loaded machine takes many times the quiet time

WORKER = Path(__file__).with_name("queue_worker.py")


@pytest.mark.distributed
def test_two_ranks_enqueue_gathered_keys_in_rank_order(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["before"], r1["before"])  # one initial queue
    assert not torch.allclose(r0["written"], r1["written"])  # the ranks wrote different keys
    # reference: the 6 gathered keys enqueued one by one into a 7-slot queue
    expected, expected_ids = r0["before"].clone(), torch.full((7,), -1)
    for slot, (key, i) in enumerate(zip(torch.cat([r0["written"], r1["written"]]),
                                        torch.cat([r0["written_ids"], r1["written_ids"]]), strict=True)):
        expected[slot], expected_ids[slot] = key, i
    for r in (r0, r1):
        assert torch.equal(r["keys"], expected)
        assert r["ids"].tolist() == [0, 1, 2, 10, 11, 12, -1]
        assert int(r["pointer"]) == 6
