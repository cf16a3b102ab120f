"""The writer's overflow file: entries that neither the database nor the queue could take.

JSON lines (metadata only, mode 0600) appended to ``path``. To replay, the file is renamed to
a ``<path>.<token>.replaying`` file of its own (new entries start a fresh file), read in
batches from the offset kept beside it, and removed once every batch is stored. A replay cut
short (database gone again, process killed) resumes from that offset, at the next try or the
next start; an exclusive lock keeps two processes on one data directory from replaying the
same file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from qwen_gateway.store.audit import AuditEntry
from qwen_gateway.store.usage import UsageEntry

log = logging.getLogger(__name__)

Entry = UsageEntry | AuditEntry
#: Stores a batch; returns the entries it could not store because the database is unreachable.
Store = Callable[[list[Entry]], Awaitable[list[Entry]]]


def _line(entry: Entry) -> bytes:
    fields: dict[str, Any] = asdict(entry)
    fields["ts"] = entry.ts.isoformat()
    fields["kind"] = "usage" if isinstance(entry, UsageEntry) else "audit"
    return json.dumps(fields, separators=(",", ":"), default=str).encode() + b"\n"


def _entry(line: bytes) -> Entry:
    fields = json.loads(line)
    kind = fields.pop("kind")
    fields["ts"] = datetime.fromisoformat(fields["ts"])
    return UsageEntry(**fields) if kind == "usage" else AuditEntry(**fields)


class SpillFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def pending(self) -> bool:
        return self.path.exists() or any(self._leftovers())

    def append(self, entries: Iterable[Entry]) -> None:
        data = b"".join(_line(e) for e in entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _leftovers(self) -> Iterator[Path]:
        return self.path.parent.glob(self.path.name + ".*.replaying")

    async def replay(self, store: Store, batch_size: int) -> tuple[int, bool]:
        """Store what was spilled: (entries stored, whether all of it is done)."""
        token = f"{time.time_ns():020d}-{secrets.token_hex(4)}"  # oldest first, by name
        claimed = self.path.with_name(f"{self.path.name}.{token}.replaying")
        with suppress(FileNotFoundError):
            self.path.rename(claimed)
        stored = 0
        for path in sorted(self._leftovers()):
            count, done = await self._replay_file(path, store, batch_size)
            stored += count
            if not done:
                return stored, False
        return stored, True

    async def _replay_file(self, path: Path, store: Store, batch_size: int) -> tuple[int, bool]:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return 0, True  # another process replayed it
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0, True  # another process is replaying it
            if os.fstat(handle.fileno()).st_nlink == 0:
                return 0, True  # replayed and removed while we waited for the lock
            marker = path.with_name(path.name + ".offset")
            try:
                offset = int(marker.read_text()) if marker.exists() else 0
            except ValueError:  # a marker cut short: from the start (duplicates, nothing lost)
                log.error("spill file: unreadable offset in %s; replaying from the start", marker)
                offset = 0
            handle.seek(offset)
            stored = 0
            for batch, end in _batches(handle, batch_size):
                left = await store(batch)
                stored += len(batch) - len(left)
                if left:  # part of the batch may be stored: only the rest is spilled again
                    self.append(left)
                    _mark(marker, end)
                    return stored, False
                _mark(marker, end)
            _remove(path, marker)
            return stored, True


def _mark(marker: Path, offset: int) -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(str(offset))
    tmp.replace(marker)


def _remove(path: Path, marker: Path) -> None:
    path.unlink()  # under the lock, before the marker: never replayed twice
    marker.unlink(missing_ok=True)


def _batches(handle: Any, size: int) -> Iterator[tuple[list[Entry], int]]:
    """(entries, offset after them) from the current position; unreadable lines are logged
    and skipped."""
    batch: list[Entry] = []
    position = handle.tell()
    for line in handle:
        position += len(line)
        if not line.endswith(b"\n"):
            log.error("spill file: skipped a truncated last line (%d bytes)", len(line))
            continue
        try:
            batch.append(_entry(line))
        except (ValueError, TypeError, KeyError):
            log.exception("spill file: skipped an unreadable line (%d bytes)", len(line))
            continue
        if len(batch) >= size:
            yield batch, position
            batch = []
    if batch:
        yield batch, position
