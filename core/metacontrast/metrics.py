"""The run's log: rows to every configured logger (``metacontrast.interfaces.Logger``), and
the progress bar. Only rank 0 has loggers; the other ranks' ``RunLog`` has none.

Live loggers receive each row as it is logged. A logger that is not live (a tracking
store that cannot forget rows) receives a row once a checkpoint holds its step
(``durable_step``), so that a process killed between checkpoints never leaves a step that
the resumed run logs again. For those loggers the rows are also kept, as they arrive, in
``<run_dir>/tracker_rows.jsonl`` (cut back to the resumed step when a run starts): a
resumed run asks each of them which steps its store holds (``Logger.recorded_steps``) and
hands over once more the rows up to the checkpoint that a killed process never delivered
or its store never kept.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metacontrast.config import ConfigError
from metacontrast.interfaces import Logger, RunStart

Row = dict[str, Any]
TRACKER_ROWS = "tracker_rows.jsonl"


def _read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            continue
    return entries


class RunLog:
    """``loggers``: built on rank 0 (empty elsewhere). ``durable_step``: the step of the
    newest checkpoint written (rows up to it go to loggers that are not live).
    ``heartbeat``: called after every row (the run's session clock)."""

    def __init__(self, loggers: dict[str, Logger], *, total_steps: int, initial_step: int, progress: bool,
                 heartbeat: Callable[[], None] | None = None,
                 durable_step: Callable[[], int] | None = None) -> None:
        self.loggers = dict(loggers)
        self._heartbeat = heartbeat
        self._durable_step = durable_step
        self._pending: list[tuple[str, Row, dict[str, Any] | None]] = []
        self._journal: Path | None = None
        self._bar = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step",
                             dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    @property
    def enabled(self) -> bool:
        return bool(self.loggers)

    def start(self, start: RunStart) -> None:
        """Start every logger; one that cannot start (a missing login, an unreachable
        server) ends the run before training, naming it (the others are closed). A
        resumed run then hands the loggers that are not live the rows up to ``start.step``
        their stores lack."""
        if any(not logger.live for logger in self.loggers.values()):
            self._journal = Path(start.run_dir) / TRACKER_ROWS
            kept = [e for e in _read_journal(self._journal) if int(e["row"]["step"]) <= start.step]
            self._journal.write_text("".join(json.dumps(e) + "\n" for e in kept), encoding="utf-8")
        started = []
        for name, logger in self.loggers.items():
            try:
                logger.start(start)
                if start.resumed and not logger.live:
                    self._deliver_missing(name, logger)
            except Exception as err:
                for other in started:
                    other.close("failed")
                self.loggers = {}
                self.end_progress()
                raise ConfigError(f"logger.{name}: {err}") from None
            started.append(logger)

    def _deliver_missing(self, name: str, logger: Logger) -> None:
        """The journal's rows whose steps ``logger``'s store lacks, in order."""
        recorded = logger.recorded_steps()
        if recorded is None or self._journal is None:
            return
        for entry in _read_journal(self._journal):
            if int(entry["row"]["step"]) not in recorded:
                self._deliver(name, logger, entry["kind"], entry["row"], entry.get("protocols"))

    def log(self, row: Row) -> None:
        """A logging step's row (``step`` and the metrics)."""
        self._send("metrics", row, None)
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in row.items() if k in ("loss", "lr", "images_per_s")}
            self._bar.set_postfix(shown, refresh=False)

    def log_evaluation(self, row: Row, protocols: dict[str, Any]) -> None:
        """A periodic evaluation's row (``eval/<metric>`` values) and the evaluators' settings."""
        self._send("evaluation", row, protocols)

    def _send(self, kind: str, row: Row, protocols: dict[str, Any] | None) -> None:
        if not self.loggers:
            return
        for name, logger in list(self.loggers.items()):
            if logger.live:
                self._deliver(name, logger, kind, row, protocols)
        if not all(logger.live for logger in self.loggers.values()):
            self._pending.append((kind, row, protocols))
            if self._journal is not None:
                with self._journal.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"kind": kind, "row": row, "protocols": protocols}) + "\n")
        if self._heartbeat is not None:
            self._heartbeat()

    def _deliver(self, name: str, logger: Logger, kind: str, row: Row,
                 protocols: dict[str, Any] | None) -> None:
        try:
            if kind == "metrics":
                logger.log_metrics(row)
            else:
                logger.log_evaluation(row, protocols or {})
        except Exception as err:  # a tracking service's failure must not end the training
            self.loggers.pop(name, None)
            self.write(f"logger.{name}: {type(err).__name__}: {err}; it receives nothing more in this "
                       f"process (training goes on; the other loggers keep every row)")

    def flush_durable(self) -> None:
        """Hand the rows a checkpoint now holds to the loggers that are not live."""
        if not self._pending or self._durable_step is None:
            return
        durable = self._durable_step()
        ready = [p for p in self._pending if int(p[1]["step"]) <= durable]
        if not ready:
            return
        self._pending = [p for p in self._pending if int(p[1]["step"]) > durable]
        for kind, row, protocols in ready:
            for name, logger in list(self.loggers.items()):
                if not logger.live:
                    self._deliver(name, logger, kind, row, protocols)

    def advance(self, n: int = 1) -> None:
        """A step ended (after the previous step's checkpoint, if any, was written)."""
        self.flush_durable()
        if self._bar is not None:
            self._bar.update(n)

    def end_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def wants_figures(self) -> bool:
        return any(logger.WANTS_FIGURES for logger in self.loggers.values())

    def finish(self, results: dict[str, Any], figures: dict[str, Path]) -> None:
        """After training and the final evaluation: the report's figures (to the loggers
        that want them) and the summary."""
        self.flush_durable()
        for name, logger in list(self.loggers.items()):
            try:
                if figures and logger.WANTS_FIGURES:
                    logger.log_figures(figures)
                logger.log_summary(results)
            except Exception as err:
                self.loggers.pop(name, None)
                self.write(f"logger.{name}: {type(err).__name__}: {err}; the summary did not reach it "
                           f"(results.json has it)")

    def write(self, message: str) -> None:
        """A message that does not break the progress bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self, status: str) -> None:
        """``status``: ``finished``, ``stopped`` or ``failed``. Rows no checkpoint holds are
        not handed to the loggers that are not live (the resumed run logs them)."""
        self.flush_durable()
        self.end_progress()
        for name, logger in self.loggers.items():
            try:
                logger.close(status)
            except Exception as err:
                print(f"logger.{name}: closing failed: {type(err).__name__}: {err}", file=sys.stderr)
        self.loggers = {}
