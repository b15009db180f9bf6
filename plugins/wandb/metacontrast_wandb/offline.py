"""What an offline W&B run recorded, read back without uploading it.

Each process of a run in ``mode: offline`` writes ``<run_dir>/wandb/offline-run-<time>-<id>/
run-<id>.wandb`` (``wandb sync`` uploads them, in order, to the one W&B run). The file is a
log of W&B's own protobuf ``Record`` messages (``wandb.proto.wandb_internal_pb2``) in
32 KiB blocks: a 7-byte file header (``:W&B``, magic, version), then records, each with a
7-byte header (checksum, length, type: full, first, middle or last part). This module
decodes them with W&B's message definitions: history rows by step, summary values. A
record cut short (the last block of a killed process) ends the log there.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FILE_HEADER = 7
RECORD_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def offline_files(run_dir: Path) -> list[Path]:
    """The ``.wandb`` files of every process of the run, oldest first."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def _payloads(data: bytes, path: Path) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, parts = FILE_HEADER, b""
    while pos + RECORD_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # the block's tail is padding
            pos += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[pos:pos + RECORD_HEADER])
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + RECORD_HEADER:pos + RECORD_HEADER + length]
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != checksum:
            return  # the tail a killed process left half-written: the log ends before it
        pos += RECORD_HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            yield parts + chunk
            parts = b""


def records(path: Path) -> Iterator[Any]:
    """Every ``Record`` of one ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    for payload in _payloads(Path(path).read_bytes(), Path(path)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def offline_history(run_dir: Path, files: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every history row the run's processes recorded (or those of ``files``), oldest
    first (``_step`` its step)."""
    rows = []
    for path in offline_files(run_dir) if files is None else files:
        for record in records(path):
            if record.WhichOneof("record_type") == "history":
                rows.append(_items(record.history.item))
    return rows


def offline_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary values as its last process left them."""
    summary: dict[str, Any] = {}
    for path in offline_files(run_dir):
        for record in records(path):
            if record.WhichOneof("record_type") == "summary":
                summary.update(_items(record.summary.update))
    return summary
