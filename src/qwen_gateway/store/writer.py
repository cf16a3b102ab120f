"""One owned, bounded queue for background writes (usage records, audit events).

Requests only put entries on the queue; a single task writes them in batches. While the
database is unreachable the task retries the batch in hand with exponential backoff (capped),
and new entries wait in the queue; when the queue is full they go to the spill file, which is
replayed once the database answers again (and at the next start). A batch the database
rejects as invalid is written row by row, so one bad row loses only itself. ``aclose`` writes
what is queued (or spills it, if the database is down), so a clean shutdown loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import OperationalError, StatementError

from qwen_gateway.store.audit import AuditEntry, AuditRepository
from qwen_gateway.store.spill import Entry, SpillFile
from qwen_gateway.store.usage import UsageEntry, UsageRepository

log = logging.getLogger(__name__)

_STOP: Entry = AuditEntry(datetime.fromtimestamp(0, UTC), "writer.stop", "-")  # a sentinel


@dataclass(slots=True)
class WriterStats:
    written: int = 0  # entries stored from the queue
    replayed: int = 0  # entries stored from the spill file
    spilled: int = 0  # entries put in the spill file
    dropped: int = 0  # entries lost: rejected by the database as invalid, or no room anywhere
    failed_batches: int = 0  # write attempts that failed and will be retried


def is_data_error(exc: BaseException) -> bool:
    """The database (or the driver, converting values) refused the data; any other failure
    (connection refused or cut, timeout, lock) is an outage and is retried."""
    if isinstance(exc, StatementError):
        return not isinstance(exc, OperationalError) and not getattr(
            exc, "connection_invalidated", False
        )
    return isinstance(exc, ValueError | TypeError | ArithmeticError)


class BatchWriter:
    def __init__(
        self,
        usage: UsageRepository,
        audit: AuditRepository,
        capacity: int = 10_000,
        batch_size: int = 500,
        interval: float = 0.5,
        spill: SpillFile | None = None,
        backoff: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self._usage = usage
        self._audit = audit
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(capacity)
        self._batch_size = batch_size
        self._interval = interval
        self._spill = spill
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._outage = asyncio.Event()  # set while the last attempt failed
        self.stats = WriterStats()

    @property
    def reachable(self) -> bool:
        """Whether the last write attempt reached the database."""
        return not self._outage.is_set()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def counts(self) -> dict[str, float]:
        """The stats, the queue depth and ``database_up``, for the metrics."""
        stats = {k: float(getattr(self.stats, k)) for k in WriterStats.__slots__}
        return {**stats, "queued": self.queued, "database_up": float(self.reachable)}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def put(self, entry: Entry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._set_aside([entry])

    async def flush(self) -> None:
        """Wait until everything queued so far is written, or the database is unreachable."""
        joined = asyncio.ensure_future(self._queue.join())
        outage = asyncio.ensure_future(self._outage.wait())
        try:
            await asyncio.wait((joined, outage), return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
            outage.cancel()
            await asyncio.gather(joined, outage, return_exceptions=True)  # none left running

    async def _run(self) -> None:
        await self._replay()  # what an earlier run spilled
        stop = False
        while not stop:
            first = await self._queue.get()
            batch = [first]
            with suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    while len(batch) < self._batch_size and batch[-1] is not _STOP:
                        batch.append(await self._queue.get())
            stop = batch[-1] is _STOP
            await self._write([e for e in batch if e is not _STOP])
            for _ in batch:
                self._queue.task_done()
            if self.reachable and self._spill is not None and self._spill.pending:
                await self._replay()

    async def _write(self, entries: list[Entry]) -> None:
        """Store ``entries``, retrying through an outage; when stopping, spill what is left."""
        delay = self._backoff[0]
        while entries:
            dropped = self.stats.dropped
            left = await self._store(entries)
            self.stats.written += len(entries) - len(left) - (self.stats.dropped - dropped)
            entries = left
            if not entries:
                return
            self.stats.failed_batches += 1
            if self._stopping.is_set():
                self._set_aside(entries)
                return
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            delay = min(delay * 2, self._backoff[1])

    async def _store(self, entries: list[Entry]) -> list[Entry]:
        """Write ``entries``; returns those not stored because the database is unreachable.
        Rows the database refuses are dropped (counted and logged, without their content)."""
        if self._stopping.is_set() and not self.reachable:
            return entries  # shutting down in an outage: straight to the spill file
        usage: list[Entry] = [e for e in entries if isinstance(e, UsageEntry)]
        audit: list[Entry] = [e for e in entries if isinstance(e, AuditEntry)]
        groups = [g for g in (usage, audit) if g]
        for n, group in enumerate(groups):
            later = [e for g in groups[n + 1 :] for e in g]
            try:
                await self._add(group)
            except Exception as exc:
                if not is_data_error(exc):
                    return self._unreachable(exc, [*group, *later])
                log.warning("a batch of %d was refused (%s): writing it row by row",
                            len(group), type(exc).__name__)  # fmt: skip
                for i, entry in enumerate(group):
                    try:
                        await self._add([entry])
                    except Exception as row_exc:
                        if not is_data_error(row_exc):
                            return self._unreachable(row_exc, [*group[i:], *later])
                        self.stats.dropped += 1
                        log.error("dropped a %s entry the database refused (%s)",
                                  type(entry).__name__, type(row_exc).__name__)  # fmt: skip
            self._outage.clear()
        return []

    def _unreachable(self, exc: BaseException, left: list[Entry]) -> list[Entry]:
        if self.reachable:
            log.error("the database is unreachable (%s); retrying", type(exc).__name__)
        self._outage.set()
        return left

    async def _add(self, entries: list[Entry]) -> None:
        if isinstance(entries[0], UsageEntry):
            await self._usage.add_many(entries)  # type: ignore[arg-type]
        else:
            await self._audit.add_many(entries)  # type: ignore[arg-type]

    def _set_aside(self, entries: list[Entry]) -> None:
        """Entries there is no room for: to the spill file, or dropped if it fails."""
        if self._spill is not None:
            try:
                self._spill.append(entries)
                self.stats.spilled += len(entries)
                return
            except OSError:
                log.exception("could not spill %d entries", len(entries))
        self.stats.dropped += len(entries)

    async def _replay(self) -> None:
        if self._spill is None:
            return
        try:
            stored, _ = await self._spill.replay(self._store, self._batch_size)
        except OSError:
            log.exception("replaying the spill file failed")
            return
        self.stats.replayed += stored
        if stored:
            log.info("replayed %d spilled entries", stored)

    async def aclose(self) -> None:
        """Write what is queued (spill it if the database is unreachable), then stop."""
        if self._task is None:
            return
        self._stopping.set()
        await self._queue.put(_STOP)  # behind everything already queued
        await self._task
        self._task = None
