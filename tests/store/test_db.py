"""The database handle: the reachability check behind /ready (cached, follows an outage) and
the migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from pathlib import Path

from qwen_gateway.store.db import Database
from qwen_gateway.store.keys import KeyLimits, KeyRepository
from store.helpers import proxied


async def test_reachable_follows_an_outage_and_is_cached_between_checks(
    postgres_url: str,
) -> None:
    with proxied(postgres_url) as (proxy, url):
        db = Database(url)
        try:
            db.ping_ttl = 3600
            assert await db.reachable()
            connections = proxy.connections
            proxy.down()
            assert await db.reachable()  # the cached answer: no query
            assert proxy.connections == connections
            db.ping_ttl = 0
            assert not await db.reachable()
            proxy.up()
            assert await db.reachable()
        finally:
            await db.aclose()


async def test_migrations_add_a_default_output_limit_to_keys(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate()
        await db.migrate()  # idempotent
        repo = KeyRepository(db)
        record = await repo.add(
            name="k\x00", prefix="sk-qg-abc", key_hash=secrets.token_hex(32), role="inference",
            models=None, limits=KeyLimits(rpm=5, default_max_tokens=64), expires_at=None,
            created_at=datetime.now(UTC),
        )  # fmt: skip
        again = await repo.get(record.id)
        assert again is not None and again.limits == KeyLimits(rpm=5, default_max_tokens=64)
        assert again.name == "k\\x00"
    finally:
        await db.aclose()


async def test_a_slow_probe_is_not_cancelled_but_finishes_in_the_background(
    tmp_path: Path,
) -> None:
    """A probe slower than ``ping_seconds`` answers "unreachable" but is not cancelled (a
    connection being opened then would be neither pooled nor closed); the next check waits
    for the same probe."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    db.ping_ttl, db.ping_seconds = 0.0, 0.01
    release, ran, cancelled = asyncio.Event(), [], []
    real = db._ping

    async def slow_ping() -> None:  # a connection that takes long to open (fault injected)
        ran.append(1)
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        await real()

    db._ping = slow_ping  # type: ignore[method-assign]
    try:
        assert await db.reachable() is False  # past ping_seconds
        assert await db.reachable() is False  # the same probe, still running
        assert ran == [1] and not cancelled
        release.set()
        db.ping_seconds = 30.0
        assert await db.reachable() is True  # that probe's answer, no new one
        assert ran == [1] and not cancelled
    finally:
        await db.aclose()
