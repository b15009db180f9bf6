"""Per-step metrics: ``metrics.jsonl`` (one JSON object a line), TensorBoard, progress bar."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Writes rows to ``run_dir/metrics.jsonl`` and, when enabled, TensorBoard scalars to
    ``run_dir/tensorboard``; shows a tqdm progress bar over steps. Only rank 0 logs.
    ``heartbeat``: called after every row (the run's session clock)."""

    def __init__(self, run_dir: Path, *, enabled: bool, total_steps: int, initial_step: int,
                 progress: bool, tensorboard: bool, heartbeat: Callable[[], None] | None = None) -> None:
        self.enabled = enabled
        self._heartbeat = heartbeat
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self._file = open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events of steps after ``initial_step`` (from a process that died before its
            # next checkpoint) are dropped: the resumed run logs those steps again
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=initial_step + 1)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                             dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._heartbeat is not None:
            self._heartbeat()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, row["step"])
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in row.items() if k in ("loss", "lr", "images_per_s")}
            self._bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def write(self, message: str) -> None:
        """A message that does not break the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
