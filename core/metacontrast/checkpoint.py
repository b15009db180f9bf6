"""Atomic checkpoints that load with ``weights_only=True``.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced,
then renamed over the target: a crash leaves either the old file or the new one, never a
half-written one. Loading never falls back to unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.pt$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the path."""

    exit_code = 2


class CheckpointWriteError(CheckpointError):
    """The operating system refused a checkpoint write (a full disk, a read-only or vanished
    directory): exit status 1, as for every operating-system error."""

    exit_code = 1


class _RecordingWriter:
    """A binary file that keeps the operating-system error of a failed write: torch's
    serializer turns it into ``RuntimeError: [enforce fail ...] unexpected pos``, which says
    nothing of the disk being full; ``save_atomic`` reports the recorded error instead."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as err:
            self.error = self.error or err
            raise


def _os_cause(err: BaseException, writer: _RecordingWriter | None) -> BaseException:
    """The operating-system error behind ``err`` where a write recorded one."""
    if writer is not None and writer.error is not None and not isinstance(err, OSError):
        return writer.error
    return err


def write_temporary(payload: dict[str, Any] | bytes, path: Path, what: str = "checkpoint") -> Path:
    """Write ``payload`` (a dict, saved with ``torch.save``; or bytes already serialised, as
    safetensors and ONNX give them) to a new temporary file beside ``path`` (flushed and
    fsynced) and return it; the caller renames it into place. On failure nothing remains and
    ``CheckpointError`` names ``what`` was being written and ``path``
    (``CheckpointWriteError``, exit status 1, when the operating system refused: the
    message is its own, e.g. "No space left on device")."""
    path = Path(path)
    tmp_name = None
    writer = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            writer = _RecordingWriter(f)
            if isinstance(payload, bytes):
                writer.write(payload)
            else:
                torch.save(payload, writer)
            writer.flush()
            os.fsync(f.fileno())
        written, tmp_name = Path(tmp_name), None
        return written
    except Exception as raised:
        err = _os_cause(raised, writer)
        if isinstance(err, OSError):
            cause = err.strerror or str(err)
            raise CheckpointWriteError(f"could not write {what} {path}: {cause}") from raised
        raise CheckpointError(f"could not write {what} {path}: {type(err).__name__}: {err}") from raised
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def sync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(payload: dict[str, Any], path: Path, what: str = "checkpoint") -> None:
    """Write ``payload`` to ``path`` atomically. On failure the previous file at ``path``
    is untouched, no temporary file remains, and ``CheckpointError`` names ``what`` was
    being written and the path (``CheckpointWriteError``, exit status 1, when the
    operating system refused)."""
    path = Path(path)
    tmp = write_temporary(payload, path, what)
    try:
        os.replace(tmp, path)
        sync_directory(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(f"could not write {what} {path}: {err.strerror or err}") from err


def load_safe(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors, numbers, strings and
    containers only. Anything else (a pickled object, code) is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely (weights_only=True): "
                              f"{first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a metacontrast checkpoint "
                              f"(format {FORMAT_VERSION})")
    return payload


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(path: Path) -> Path:
    """``path`` itself when it is not a directory; for a run directory its newest checkpoint
    (``checkpoints/step-*.pt``)."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = list_checkpoints(path / "checkpoints")
    if not found:
        raise CheckpointError(f"{path}: a directory without checkpoints/step-*.pt; give a checkpoint file "
                              f"or a run directory")
    return found[-1]


def prune(directory: Path, keep: int, written: Path | None = None) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all). ``written``,
    the checkpoint just written, is never deleted and counts as one of the kept, whatever
    its step beside the directory's others."""
    if keep <= 0:
        return
    found = list_checkpoints(directory)
    if written is not None:
        written = Path(directory) / Path(written).name
        found = [p for p in found if p != written] + [written]
    for p in found[:-keep]:
        p.unlink(missing_ok=True)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random stream as tensors and plain numbers (loadable with weights_only)."""
    import random

    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"key": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype("uint32"), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
