"""The background writer: a refused row loses only itself; a database outage loses nothing
(retry with backoff, spill a full queue to a file, replay it when the database is back and at
the next start). Outages are the real PostgreSQL behind a TcpProxy that the test cuts."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from qwen_gateway.store.audit import AuditEntry, AuditRepository
from qwen_gateway.store.db import Database
from qwen_gateway.store.spill import SpillFile
from qwen_gateway.store.usage import UsageRepository
from qwen_gateway.store.writer import BatchWriter
from store.helpers import eventually, proxied, stored, usage


@asynccontextmanager
async def writer(
    url: str, spill: Path | None = None, capacity: int = 10_000, batch_size: int = 500
) -> AsyncIterator[BatchWriter]:
    db = Database(url)
    await db.migrate()
    w = BatchWriter(
        UsageRepository(db), AuditRepository(db), capacity, batch_size, 0.05,
        spill=SpillFile(spill) if spill is not None else None, backoff=(0.01, 0.1),
    )  # fmt: skip
    w.start()
    try:
        yield w
    finally:
        await w.aclose()
        await db.aclose()


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}-"


async def test_a_refused_row_loses_only_itself(database_url: str) -> None:
    p = _prefix()
    async with writer(database_url) as w:
        for i in range(5):  # no INTEGER column holds 2**70
            w.put(usage(f"{p}{i}", prompt_tokens=2**70 if i == 2 else 3))
        await w.flush()
        assert w.stats.dropped == 1 and w.stats.written == 4
        assert w.reachable
    assert await stored(database_url, p) == {f"{p}{i}": 1 for i in (0, 1, 3, 4)}


async def test_entries_put_during_an_outage_are_stored_when_the_database_is_back(
    postgres_url: str, tmp_path: Path
) -> None:
    p = _prefix()
    with proxied(postgres_url) as (proxy, url):
        async with writer(url, tmp_path / "spill.jsonl") as w:
            w.put(usage(f"{p}before"))
            await w.flush()
            proxy.down()
            for i in range(20):
                w.put(usage(f"{p}{i}"))
            w.put(AuditEntry(usage("x").ts, "key.create", "cli"))

            async def failing() -> bool:
                return w.stats.failed_batches >= 3

            await eventually(failing)
            assert not w.reachable and w.counts()["database_up"] == 0
            proxy.up()

            async def written() -> bool:
                return w.stats.written == 22

            await eventually(written)
            assert w.reachable and w.stats.dropped == w.stats.spilled == 0
    assert await stored(postgres_url, p) == {f"{p}before": 1, **{f"{p}{i}": 1 for i in range(20)}}


async def test_a_full_queue_spills_to_a_file_that_is_replayed_once_the_database_is_back(
    postgres_url: str, tmp_path: Path
) -> None:
    p = _prefix()
    spill = tmp_path / "spill.jsonl"
    with proxied(postgres_url) as (proxy, url):
        async with writer(url, spill, capacity=10, batch_size=5) as w:
            await w.flush()
            proxy.down()
            for i in range(60):
                w.put(usage(f"{p}{i}"))
            assert w.stats.spilled >= 40 and w.stats.dropped == 0
            assert spill.stat().st_mode & 0o777 == 0o600

            async def failing() -> bool:
                return w.stats.failed_batches >= 2

            await eventually(failing)
            proxy.up()

            async def done() -> bool:
                return w.stats.written + w.stats.replayed == 60

            await eventually(done)
            assert w.stats.replayed == w.stats.spilled
            assert not os.listdir(tmp_path)  # the spill file is gone once replayed
    assert await stored(postgres_url, p) == {f"{p}{i}": 1 for i in range(60)}


async def test_what_is_queued_at_shutdown_in_an_outage_is_replayed_at_the_next_start(
    postgres_url: str, tmp_path: Path
) -> None:
    p = _prefix()
    spill = tmp_path / "spill.jsonl"
    with proxied(postgres_url) as (proxy, url):
        async with writer(url, spill) as w:
            await w.flush()
            proxy.down()
            for i in range(30):
                w.put(usage(f"{p}{i}"))
        assert w.stats.spilled == 30 and w.stats.written == 0
        assert spill.exists() and os.stat(spill).st_mode & 0o777 == 0o600
        proxy.up()
        async with writer(url, spill) as again:

            async def replayed() -> bool:
                return again.stats.replayed == 30

            await eventually(replayed)
    assert not os.listdir(tmp_path)
    assert await stored(postgres_url, p) == {f"{p}{i}": 1 for i in range(30)}
