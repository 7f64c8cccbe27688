"""Read a W&B offline run file (``run-*.wandb``) with W&B's own record protobufs.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then records
framed as in LevelDB's log format (32 KiB blocks; each chunk a 7-byte header of CRC32, length
and type: 1 full, 2 first, 3 middle, 4 last). Each record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32 * 1024
_HEADER = 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):
            pending += chunk


def wait_until_written(path: Path, last_step: int, timeout: float = 60.0) -> None:
    """``run.finish()`` returns before W&B's core process has written the whole log: wait until
    the log holds ``last_step`` and its size has settled."""
    import time

    deadline, size = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        now = Path(path).stat().st_size
        if now == size and any(row.get("_step") == last_step for row in history(path)):
            return
        size = now
        time.sleep(0.5)
    raise TimeoutError(f"{path} never held step {last_step}")


def history(path: Path) -> list[dict]:
    """Every logged row: ``{key: value}`` with ``_step``, values decoded from their JSON."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items})
    return rows


def summary(path: Path) -> dict:
    out: dict = {}
    for record in records(path):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                out["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return out


def run_record(path: Path):
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    return None
