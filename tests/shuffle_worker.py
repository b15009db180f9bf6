"""Run under torchrun: ``distributed.shuffled_forward`` on rank-tagged rows.

Usage: torchrun --standalone --nproc_per_node=W tests/shuffle_worker.py OUT_DIR
Row ``b`` of rank ``r`` holds ``(r * 100 + b, 0)``; the function writes the executing
rank into column 1 and subtracts the batch mean of column 0 into column 2 (a batch
statistic, like BatchNorm's). Writes OUT_DIR/rank<r>.pt with input and output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from metacontrast import distributed


def main(out_dir: Path) -> None:
    world = distributed.init_from_env("cpu")
    torch.manual_seed(world.rank)  # only rank 0's generator draws the permutation
    b = 16
    x = torch.stack([torch.arange(b, dtype=torch.float32) + 100 * world.rank, torch.zeros(b)], dim=1)

    def tag(rows: torch.Tensor) -> torch.Tensor:
        executing = torch.full((rows.shape[0], 1), float(world.rank))
        return torch.cat([rows[:, :1], executing, rows[:, :1] - rows[:, :1].mean()], dim=1)

    out = distributed.shuffled_forward(tag, x)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "out": out}, out_dir / f"rank{world.rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
