"""One owned, bounded queue for background writes (usage records, audit events).

Requests only put entries on the queue; a single task writes them in batches. ``aclose``
drains what is queued, so a clean shutdown (SIGTERM) loses nothing. A full queue drops the
entry and counts it rather than slowing requests down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, datetime

from qwen_gateway.store.audit import AuditEntry, AuditRepository
from qwen_gateway.store.usage import UsageEntry, UsageRepository

log = logging.getLogger(__name__)

Entry = UsageEntry | AuditEntry
_STOP: Entry = AuditEntry(datetime.fromtimestamp(0, UTC), "writer.stop", "-")  # a sentinel


class BatchWriter:
    def __init__(
        self,
        usage: UsageRepository,
        audit: AuditRepository,
        capacity: int = 10_000,
        batch_size: int = 500,
        interval: float = 0.5,
    ) -> None:
        self._usage = usage
        self._audit = audit
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(capacity)
        self._batch_size = batch_size
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0
        self.failed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def put(self, entry: Entry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        await self._queue.join()

    async def _run(self) -> None:
        stop = False
        while not stop:
            first = await self._queue.get()
            batch = [first]
            with suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    while len(batch) < self._batch_size and batch[-1] is not _STOP:
                        batch.append(await self._queue.get())
            if batch[-1] is _STOP:
                stop = True
            await self._write(batch)

    async def _write(self, batch: list[Entry]) -> None:
        usage = [e for e in batch if isinstance(e, UsageEntry)]
        audit = [e for e in batch if isinstance(e, AuditEntry) and e is not _STOP]
        for entries, write in ((usage, self._usage.add_many), (audit, self._audit.add_many)):
            if entries:
                await self._retrying(write, entries)  # type: ignore[arg-type]
        for _ in batch:
            self._queue.task_done()

    async def _retrying(
        self, write: Callable[[list[Entry]], Awaitable[None]], entries: list[Entry]
    ) -> None:
        for attempt in range(3):
            try:
                await write(entries)
                self.written += len(entries)
                return
            except Exception:
                log.exception("background write failed (attempt %d of 3)", attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))
        self.failed += len(entries)

    async def aclose(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.put(_STOP)  # behind everything already queued
        await self._task
        self._task = None
