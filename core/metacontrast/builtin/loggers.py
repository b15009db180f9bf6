"""The built-in loggers: ``jsonl`` (``metrics.jsonl``) and ``tensorboard``.

Both can forget what a killed process logged after its last checkpoint, so both receive
rows live: ``metrics.jsonl`` is cut back to the resumed step when the run starts, and
TensorBoard's writer purges the events after it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from metacontrast.interfaces import Logger, RunStart
from metacontrast.run_dirs import cut_metrics

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class JsonlLogger(Logger):
    """``<run_dir>/metrics.jsonl``: one JSON object a line, each row as it is logged (the
    file ``metacontrast report`` reads). Rows after the step a run resumes from are
    removed when it starts."""

    NAME = "jsonl"

    def __init__(self, config: Any, context: Any) -> None:
        super().__init__(config, context)
        self._file: Any = None

    def start(self, start: RunStart) -> None:
        dropped = cut_metrics(start.run_dir, start.step)
        if dropped:
            print(f"{METRICS_FILE}: {dropped} rows logged after step {start.step} by an earlier process "
                  f"removed (those steps run again)", file=sys.stderr)
        self._file = open(Path(start.run_dir) / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115

    def _write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def log_metrics(self, row: dict[str, Any]) -> None:
        self._write(row)

    def log_evaluation(self, row: dict[str, Any], protocols: dict[str, dict[str, Any]]) -> None:
        self._write(row)

    def close(self, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardLogger(Logger):
    """TensorBoard scalars in ``<run_dir>/tensorboard``: every number of a row (but
    ``step``) at its step. Events after the step a run resumes from are purged."""

    NAME = "tensorboard"

    def __init__(self, config: Any, context: Any) -> None:
        super().__init__(config, context)
        self._writer: Any = None

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return "it needs the tensorboard package: pip install tensorboard"
        return None

    def start(self, start: RunStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(start.run_dir) / TENSORBOARD_DIR),
                                     purge_step=start.step + 1)

    def _scalars(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                self._writer.add_scalar(key, value, row["step"])

    def log_metrics(self, row: dict[str, Any]) -> None:
        self._scalars(row)

    def log_evaluation(self, row: dict[str, Any], protocols: dict[str, dict[str, Any]]) -> None:
        self._scalars(row)

    def close(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
