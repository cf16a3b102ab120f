"""The database handle: the reachability check behind /ready (cached, follows an outage) and
the migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

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
