"""Stop requests by signal: finish the step, checkpoint, exit ``128 + signal``.

A batch scheduler or ``torchrun`` asks a job to stop with SIGTERM (Ctrl-C sends SIGINT).
While training, ``StopSignals`` turns either into a flag; the trainer looks at it at each
step boundary, agrees with the other ranks (any rank's request stops all of them at the
same step), writes a checkpoint and raises ``StopRequested``. The command line turns that
into exit status ``128 + signal`` (143 for SIGTERM). A second SIGINT stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):  # noqa: N818 (a request, not an error)
    """Training stopped on a signal after writing ``checkpoint`` at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        run_dir = f" in {Path(checkpoint).parent.parent}" if checkpoint else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}{where}; "
                         f"run the same command again to resume{run_dir}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: while inside, SIGTERM and SIGINT set ``requested`` (the signal
    number) instead of killing the process. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            print(f"received {signal.Signals(signum).name}: stopping at the end of this step",
                  file=sys.stderr, flush=True)
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


class Terminated(BaseException):
    """SIGTERM outside training (loading, baselines, final evaluation): the command line
    ends with exit status 143 and one line, like an interruption."""


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """While inside (main thread only), SIGTERM raises ``Terminated`` instead of killing
    the process at once, so that cleanups run; training installs its own handler
    (``StopSignals``) on top, and the previous handler comes back on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
