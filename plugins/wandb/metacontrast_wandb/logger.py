"""The W&B logger: one W&B run per metacontrast run, continued when the run resumes.

The W&B run id is kept in ``<run_dir>/<key>_run.json`` (``wandb_run.json``) when the run
first starts; every later process of the run (a resume after a kill, a requeued job)
continues that id. Nothing here chooses where data goes: with ``mode: null`` W&B's own
settings decide (``WANDB_MODE``, ``wandb offline``, ``wandb login``); ``mode: offline``
keeps the run under ``<run_dir>/wandb`` until ``wandb sync``.
"""

from __future__ import annotations

import os
import secrets
import string
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from metacontrast.interfaces import Logger, RunStart
from metacontrast_wandb.offline import offline_files, offline_history

MODES = ("online", "offline", "disabled")
IN_USE_WAIT_S = 60.0  # how long a resumed run waits for a killed process's W&B service to let go
ROWS = ("checkpointed", "live")


@attrs.define
class WandbConfig:
    """``project``/``entity``/``group``/``tags``: where the run goes in W&B. ``run_name``: the
    run's display name (default: the run directory's name). ``mode``: ``online``,
    ``offline``, ``disabled``, or null for W&B's own settings. ``rows``: ``checkpointed``
    (a row reaches W&B once a checkpoint holds its step: each step exactly once across a
    kill and resume) or ``live`` (as logged; a kill between checkpoints can leave steps
    that the resumed run logs again)."""

    project: str = "metacontrast"
    entity: str | None = None
    mode: str | None = None
    run_name: str | None = None
    group: str | None = None
    tags: list[str] = attrs.field(factory=list)
    rows: str = "checkpointed"

    def __attrs_post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not a W&B mode; choose one of {', '.join(MODES)}, or "
                             f"null for W&B's own settings")
        if self.rows not in ROWS:
            raise ValueError(f"rows: {self.rows!r}; choose checkpointed or live")


def own_service() -> None:
    """Run this process's W&B service itself. W&B leaves the address of its service in
    ``WANDB_SERVICE`` for child processes; a training started by a process that used W&B
    (a notebook, a launcher, a test runner) would share that service, which keeps the run
    registered after this process is killed, so that its resume is refused ("run ID ... is
    in use"). A service started by another process is not used."""
    parts = os.environ.get("WANDB_SERVICE", "").split("-")
    if len(parts) > 2 and parts[1].isdigit() and int(parts[1]) != os.getpid():
        os.environ.pop("WANDB_SERVICE", None)


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class WandbLogger(Logger):
    """Rows as W&B history at their step (``loss``, ``loss/<term>``, ``lr``,
    ``eval/<metric>``), the config once, the report's figures as images, the final
    metrics in the run's summary (``final/<encoder>/<metric>``)."""

    NAME = "wandb"
    Config = WandbConfig
    WANTS_FIGURES = True

    def __init__(self, config: WandbConfig, context: Any) -> None:
        super().__init__(config, context)
        self.live = config.rows == "live"
        self._run: Any = None
        self._this_process = self._run_dir = Path(".")
        self._step = 0

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            return "it needs the wandb package: pip install wandb"
        return None

    def run_id(self, run_dir: Path) -> str:
        """The W&B run id of ``run_dir``: the stored one, or a new one stored now (8
        lowercase letters and digits, as W&B makes them)."""
        stored = self.recall(run_dir, f"{self.key}_run.json")
        if stored is not None:
            return str(stored["id"])
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        self.remember(run_dir, f"{self.key}_run.json",
                      {"id": run_id, "project": self.config.project, "entity": self.config.entity})
        return run_id

    def start(self, start: RunStart) -> None:
        import wandb

        c = self.config
        self._step = start.step
        own_service()
        run_id, waited = self.run_id(start.run_dir), 0.0
        while True:
            try:
                self._run = wandb.init(project=c.project, entity=c.entity, group=c.group, tags=list(c.tags),
                                       name=c.run_name or Path(start.run_dir).name, id=run_id, resume="allow",
                                       mode=c.mode, dir=str(start.run_dir), config=start.config)
                break
            except Exception as err:
                first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
                if "in use" in first and waited < IN_USE_WAIT_S:
                    # a killed process's W&B service still holds the run; it exits on its own
                    if waited == 0:
                        print(f"W&B run {run_id} is still held by a stopped process's W&B service; "
                              f"waiting up to {IN_USE_WAIT_S:.0f} s for it to let go", file=sys.stderr)
                    time.sleep(2.0)
                    waited += 2.0
                    continue
                advice = ("; log in with `wandb login`, or set logger.wandb.mode=offline to keep the run "
                          "under the run directory" if "api_key" in first.lower() or "login" in first.lower()
                          else "")
                raise RuntimeError(f"W&B could not start ({type(err).__name__}: {first}){advice}") from None
        self._this_process = Path(self._run.dir).parent
        self._run_dir = Path(start.run_dir)

    def recorded_steps(self) -> set[int] | None:
        """Offline: the steps the run's earlier processes wrote to their logs (W&B writes
        them in 32 KiB blocks, so a killed process loses the rows of its last block).
        Online: ``None`` (the server is not asked)."""
        if self._run.settings.mode != "offline":
            return None
        earlier = [f for f in offline_files(self._run_dir) if f.parent != self._this_process]
        return {int(row["_step"]) for row in offline_history(self._run_dir, earlier) if "_step" in row}

    def _log(self, row: dict[str, Any]) -> None:
        self._step = int(row["step"])
        self._run.log(_numbers(row), step=self._step)

    def log_metrics(self, row: dict[str, Any]) -> None:
        self._log(row)

    def log_evaluation(self, row: dict[str, Any], protocols: dict[str, dict[str, Any]]) -> None:
        self._log(row)

    def log_figures(self, figures: dict[str, Path]) -> None:
        import wandb

        self._run.log({f"report/{name}": wandb.Image(str(path)) for name, path in figures.items()},
                      step=self._step)

    def log_summary(self, results: dict[str, Any]) -> None:
        for encoder, metrics in (results.get("metrics") or {}).items():
            for metric, value in metrics.items():
                self._run.summary[f"final/{encoder}/{metric}"] = value
        for key in ("steps", "epochs", "wall_clock_s", "train_loop_s"):
            if key in results:
                self._run.summary[key] = results[key]

    def close(self, status: str) -> None:
        if self._run is None:
            return
        if status == "stopped":
            self._run.mark_preempting()  # stopped by a signal; the run resumes later
        self._run.finish(exit_code=0 if status == "finished" else 1)
        self._run = None
