"""The database handle's reachability check, behind /ready: cached, and it follows an outage."""

from __future__ import annotations

from qwen_gateway.store.db import Database
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
