"""The directory a run owns: where it is, the lock that keeps it to one process, and what
a process that comes back to it finds there.

- **Where.** ``trainer.run_dir`` when given. Otherwise ``runs/<method>-<data>-<time>``,
  unless ``runs/`` holds an unfinished run of the same config (the same ``config_digest``):
  then that one, so that after a stop, a crash or ``kill -9`` the same command resumes. A
  run is finished once it has written ``results.json``; a finished directory is never
  trained into again (``claim`` refuses it and says what to do instead), and the same
  command then starts a new run. A run that starts afresh (``trainer.resume=never``, or
  from a checkpoint path) never goes into an existing run: without ``trainer.run_dir`` it
  gets a new directory; a given directory that holds a run is refused (``claim``), so two
  runs are never stitched into one directory's metrics and checkpoints.
- **One process.** ``claim`` holds an exclusive ``flock`` on ``<run_dir>/.lock`` for as
  long as the run lasts (rank 0 holds it for all ranks under torchrun). The kernel drops
  the lock when the process ends, however it ends, so a killed run never leaves a stale
  lock; while it lives, a second process is refused with the first one's pid, host and
  start time, which the lock file holds.
- **Writable first.** Claiming makes the directory and the lock file, so a location that
  cannot be written fails at once, naming the path, before any data is read.
- **Time.** Every process that works on the run keeps a small record of when it started
  and when it was last seen (``sessions/``); ``SessionClock.total_s`` adds them up, so a
  resumed run's wall-clock counts the processes before it, killed ones included.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from metacontrast.config import ConfigError

RUNS_ROOT = Path("runs")
LOCK_NAME = ".lock"
RUN_INFO = "run.json"
RESULTS = "results.json"
# keys that change how a run is watched or kept, not what it trains
NOT_IDENTITY = ("trainer.run_dir", "trainer.resume", "trainer.progress", "trainer.tensorboard",
                "trainer.log_every", "trainer.threads", "trainer.checkpoint_every",
                "trainer.keep_checkpoints", "logger")


class RunDirError(ConfigError):
    """The run directory cannot be used: another process holds it, or it holds a finished
    run. The message names the directory and what to do."""

    exit_code = 2


class RunDirUnwritableError(RunDirError):
    """The operating system refuses to let the run directory be made or written."""

    exit_code = 1


def config_digest(cfg: DictConfig) -> str:
    """12 hex digits identifying what ``cfg`` trains (``NOT_IDENTITY`` keys left out)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    for key in NOT_IDENTITY:
        section, _, leaf = key.partition(".")
        if leaf:
            plain.get(section, {}).pop(leaf, None)
        else:
            plain.pop(section, None)
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it: a reader (or
    a crash) sees the old content or the new, never half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _unusable(path: Path, err: OSError) -> RunDirError:
    cause = err.strerror or type(err).__name__
    where = err.filename or path
    return RunDirUnwritableError(f"trainer.run_dir: cannot write {where}: {cause}; "
                                 f"choose a writable trainer.run_dir")


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock``, with the holder's pid, host and
    start time written in the file."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @staticmethod
    def holder(run_dir: Path) -> dict[str, Any]:
        """What the lock file says about the process that holds (or last held) it."""
        try:
            return json.loads((Path(run_dir) / LOCK_NAME).read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder(self.path.parent)
            who = (f"pid {h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started', '?')}"
                   if h else "another process")
            raise RunDirError(f"trainer.run_dir: {self.path.parent} is in use by {who}; wait for it to "
                              f"end, or start another run with a new trainer.run_dir") from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / RESULTS).is_file()


def _locked(run_dir: Path) -> bool:
    """Whether a living process holds ``run_dir``'s lock (probed without keeping it)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def unfinished_run(root: Path, digest: str) -> Path | None:
    """The newest directory under ``root`` that holds an unfinished run of the config
    with ``digest``, or None."""
    if not root.is_dir():
        return None
    found = []
    for info in root.glob(f"*/{RUN_INFO}"):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(info.read_text())
            if meta.get("config_digest") == digest and not is_finished(info.parent):
                found.append((str(meta.get("created", "")), info.parent.name, info.parent))
    return max(found)[2] if found else None


def data_label(cfg: DictConfig) -> str:
    """The data's name in a run directory's name: ``data.name``, or for a table the table
    itself (``wine`` for ``sklearn:wine``, the file's stem for a CSV or Parquet file,
    ``openml-31``)."""
    if str(cfg.data.name) != "tabular":
        return str(cfg.data.name)
    source = str(cfg.data.table.source)
    kind, _, rest = source.partition(":")
    if kind == "sklearn" and rest:
        return rest
    if kind == "openml" and rest:
        return f"openml-{rest}"
    if cfg.data.root:
        return Path(str(cfg.data.root)).stem or "table"
    return "table"


def default_dir_stem(cfg: DictConfig) -> str:
    """``<method>-<data>-<time>``."""
    return f"{cfg.method_name}-{data_label(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _new_default_dir(cfg: DictConfig, root: Path) -> Path:
    """``root/<method>-<data>-<time>``, with ``-2``, ``-3``... when a run started in the
    same second already took the name."""
    stem = default_dir_stem(cfg)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = root / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"trainer.run_dir: no free name for {stem} under {root}")


def _refuse_finished(run_dir: Path) -> None:
    from metacontrast.checkpoint import list_checkpoints

    newest = list_checkpoints(run_dir / "checkpoints")
    evaluate = f"`metacontrast eval checkpoint={newest[-1]}` evaluates it again; " if newest else ""
    further = (f"to train it further, start a new run from its checkpoint: trainer.run_dir=NEW_DIR "
               f"trainer.resume={newest[-1]}" if newest else "start a new run with a new trainer.run_dir")
    raise RunDirError(f"trainer.run_dir: {run_dir} holds a finished run ({RESULTS}); it is kept as it is. "
                      f"{evaluate}{further}")


def starts_afresh(cfg: DictConfig) -> bool:
    """Whether the run must not continue an existing one: ``trainer.resume`` is ``never``
    or a checkpoint path (``auto`` continues the run directory's own checkpoints)."""
    return str(cfg.trainer.resume) != "auto"


def choose_run_dir(cfg: DictConfig, root: Path = RUNS_ROOT, *, fresh: bool = False) -> tuple[Path, bool]:
    """The directory this config's run uses, and whether it was given (``trainer.run_dir``).
    ``fresh``: never an existing unfinished run (a new default directory instead)."""
    if cfg.trainer.run_dir:
        return Path(str(cfg.trainer.run_dir)), True
    existing = None if fresh else unfinished_run(root, config_digest(cfg))
    if existing is not None:
        return existing, False
    return _new_default_dir(cfg, root), False


def _refuse_existing_run(run_dir: Path, cfg: DictConfig) -> None:
    """A fresh start (``trainer.resume`` never or a path) into a directory that holds a run."""
    from metacontrast.checkpoint import list_checkpoints

    newest = list_checkpoints(run_dir / "checkpoints")
    reach = f" (its checkpoints reach {newest[-1].name})" if newest else ""
    how = str(cfg.trainer.resume)
    start = ("trainer.resume=never starts a new run" if how == "never"
             else f"trainer.resume={how} starts a new run from that checkpoint")
    raise RunDirError(f"trainer.run_dir: {run_dir} holds a run already{reach}; {start} and never writes "
                      f"into an existing one: give a new trainer.run_dir (or leave it out for a new "
                      f"directory under runs/), or leave trainer.resume out to continue this run")


@contextlib.contextmanager
def claim(cfg: DictConfig, *, holder: bool = True, allow_finished: bool = False,
          root: Path = RUNS_ROOT) -> Iterator[Path]:
    """Choose the run directory, make it, lock it and record the config's digest there;
    yields its path and releases the lock on leaving. ``holder`` false (ranks other than
    0): choose nothing and lock nothing (the caller gets rank 0's choice).
    ``allow_finished``: a finished run may be used (evaluation writes beside it); otherwise
    a run that starts afresh (``starts_afresh``) is refused a directory holding a run."""
    if not holder:
        yield Path()
        return
    run_dir = Path(str(cfg.trainer.run_dir)) if cfg.trainer.run_dir else root
    try:
        existed = run_dir.exists()
        fresh = starts_afresh(cfg) and not allow_finished
        run_dir, given = choose_run_dir(cfg, root, fresh=fresh)
        # made here: a given directory that was not there, or a new default one
        made = not existed if given else not (run_dir / RUN_INFO).exists()
        first = not (run_dir / RUN_INFO).exists()  # no earlier process claimed it
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        lock.acquire()
    except OSError as err:
        raise _unusable(run_dir, err) from None
    try:
        if is_finished(run_dir) and not allow_finished:
            _refuse_finished(run_dir)
        if fresh and not first:
            _refuse_existing_run(run_dir, cfg)
        remove_stale_temporaries(run_dir)
        info = {"config_digest": config_digest(cfg),
                "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        if not (run_dir / RUN_INFO).is_file():
            try:
                write_text_atomic(run_dir / RUN_INFO, json.dumps(info, indent=2) + "\n")
            except OSError as err:
                raise _unusable(run_dir, err) from None
        if not given:
            print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
        yield run_dir
    except BaseException:
        if first:
            _remove_if_only_bookkeeping(run_dir, remove_dir=made)
        raise
    finally:
        lock.release()


def remove_stale_temporaries(run_dir: Path) -> int:
    """Remove the temporary files an atomic write leaves when its process is killed before
    the rename (``.<name>.*.tmp``); only the lock holder calls this, so none is being
    written. Returns how many went."""
    stale = [p for d in (run_dir, run_dir / "checkpoints", run_dir / "sessions") if d.is_dir()
             for p in d.glob(".*.tmp")]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return len(stale)


BOOKKEEPING = {LOCK_NAME, RUN_INFO, "sessions", "config.yaml"}


def _remove_if_only_bookkeeping(run_dir: Path, remove_dir: bool) -> None:
    """The first run in a directory failed before writing anything of its own (a config
    that does not build, data that is not there): its bookkeeping goes again, and the
    directory too when this process made it."""
    with contextlib.suppress(OSError):
        if not {p.name for p in run_dir.iterdir()} <= BOOKKEEPING:
            return
        if remove_dir:
            shutil.rmtree(run_dir)
            return
        for name in BOOKKEEPING:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def cut_metrics(run_dir: Path, step: int) -> int:
    """Drop the rows of ``<run_dir>/metrics.jsonl`` logged after ``step`` (a process that
    died after its last checkpoint logged steps the resumed run does again). Returns how
    many rows went."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by the kill
            dropped += 1
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        write_text_atomic(path, "".join(f"{ln}\n" for ln in kept))
    return dropped


class SessionClock:
    """This process's share of a run's wall-clock: ``sessions/<start>-<pid>.json`` holds
    when it started and when it was last seen (``touch``)."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir) / "sessions"
        self.started = time.time()
        self.path = self.directory / f"{int(self.started * 1000)}-{os.getpid()}.json"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.touch()

    def touch(self) -> None:
        write_text_atomic(self.path, json.dumps({"started_at": self.started, "last_seen_at": time.time()}))

    def total_s(self) -> float:
        """Seconds over every process of the run, each from its start to its last sign of life."""
        self.touch()
        total = 0.0
        for path in self.directory.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                s = json.loads(path.read_text())
                total += max(0.0, float(s["last_seen_at"]) - float(s["started_at"]))
        return total
