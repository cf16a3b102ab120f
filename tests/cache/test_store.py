"""The stores: the in-process LRU keeps at most ``max_bytes`` (evicting the least recently
used, counted), entries expire after the TTL; Redis entries are shared by every client with
the same prefix, and a Redis that cannot be reached is a miss, counted, never an error."""

from __future__ import annotations

import secrets

import pytest
import redis.asyncio

from qwen_gateway.cache.store import (
    ENTRY_OVERHEAD,
    CachedAnswer,
    LocalStore,
    RedisStore,
    decode,
    encode,
)
from qwen_gateway.core.types import ChoiceFinished, TextDelta, ToolCallDelta, Usage
from support.redis_outage import proxied_redis


class Counts:
    def __init__(self) -> None:
        self.evicted = 0
        self.errors: list[str] = []

    def cache_evicted(self, count: int) -> None:
        self.evicted += count

    def cache_error(self, operation: str) -> None:
        self.errors.append(operation)


def _answer(text: str = "hello") -> CachedAnswer:
    events = (TextDelta(0, text), ChoiceFinished(0, "stop"))
    return CachedAnswer(events, Usage(3, 1), "m")


def _size(key: str, answer: CachedAnswer) -> int:
    return len(key) + len(encode(answer)) + ENTRY_OVERHEAD


def test_an_answer_survives_encoding_with_every_event_kind() -> None:
    answer = CachedAnswer(
        (
            TextDelta(0, "héllo 你好"),
            ToolCallDelta(1, 0, "call_1", "f", '{"a": 1}'),
            ChoiceFinished(0, "stop"),
            ChoiceFinished(1, "tool_calls"),
        ),
        Usage(12, 5),
        "qwen",
    )
    assert decode(encode(answer)) == answer
    with pytest.raises(ValueError):
        decode(b'{"v": 2}')


async def test_the_local_store_keeps_at_most_max_bytes_evicting_the_least_recently_used() -> None:
    counts = Counts()
    one = _size("k0", _answer())
    store = LocalStore(max_bytes=3 * one, ttl=60, max_entry_bytes=10_000, observer=counts)
    for i in range(3):
        assert await store.put(f"k{i}", _answer())
    assert store.bytes == 3 * one and counts.evicted == 0
    assert await store.get("k0") == _answer()  # k0 is now the most recently used
    assert await store.put("k3", _answer())
    assert store.bytes <= store.max_bytes and len(store) == 3
    assert counts.evicted == 1
    assert await store.get("k1") is None  # the least recently used went
    assert await store.get("k0") == await store.get("k3") == _answer()


async def test_replacing_an_entry_does_not_count_it_twice() -> None:
    store = LocalStore(max_bytes=10_000, ttl=60, max_entry_bytes=10_000)
    await store.put("k", _answer("a"))
    await store.put("k", _answer("b"))
    assert len(store) == 1 and store.bytes == _size("k", _answer("b"))
    assert await store.get("k") == _answer("b")


async def test_entries_expire_after_the_ttl() -> None:
    now = [100.0]
    store = LocalStore(max_bytes=10_000, ttl=5, max_entry_bytes=10_000, clock=lambda: now[0])
    await store.put("k", _answer())
    now[0] = 104.9
    assert await store.get("k") == _answer()
    now[0] = 105.0
    assert await store.get("k") is None
    assert store.bytes == 0


async def test_an_entry_over_the_cap_is_not_kept_by_either_store(redis_url: str) -> None:
    big = _answer("x" * 2000)
    local = LocalStore(max_bytes=1_000_000, ttl=60, max_entry_bytes=1000)
    assert not await local.put("k", big) and len(local) == 0
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        prefix = f"test-cache-{secrets.token_hex(4)}"
        store = RedisStore(client, prefix, ttl=60, max_entry_bytes=1000)
        assert not await store.put("k", big)
        assert await client.get(f"{prefix}:k") is None
    finally:
        await client.aclose()


async def test_redis_entries_are_shared_by_clients_with_the_same_prefix_and_expire(
    redis_url: str,
) -> None:
    a = redis.asyncio.Redis.from_url(redis_url)
    b = redis.asyncio.Redis.from_url(redis_url)
    try:
        prefix = f"test-cache-{secrets.token_hex(4)}"
        one = RedisStore(a, prefix, ttl=60, max_entry_bytes=10_000)
        two = RedisStore(b, prefix, ttl=60, max_entry_bytes=10_000)
        other = RedisStore(b, prefix + "-other", ttl=60, max_entry_bytes=10_000)
        assert await one.put("k", _answer())
        assert await two.get("k") == _answer()
        assert await other.get("k") is None
        ttl_ms = await a.pttl(f"{prefix}:k")
        assert 0 < ttl_ms <= 60_000  # SET ... PX: Redis drops it
        await a.set(f"{prefix}:bad", b"not json")
        counts = Counts()
        assert await RedisStore(a, prefix, 60, 10_000, counts).get("bad") is None
        assert counts.errors == ["decode"]
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_redis_outage_is_a_miss_and_a_skipped_write_counted_not_raised(
    redis_url: str,
) -> None:
    counts = Counts()
    with proxied_redis(redis_url) as (proxy, url):
        client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            store = RedisStore(client, f"test-cache-{secrets.token_hex(4)}", 60, 10_000, counts)
            assert await store.put("k", _answer())
            proxy.down()
            assert await store.get("k") is None
            assert not await store.put("k2", _answer())
            assert counts.errors == ["get", "set"]
            proxy.up()
            assert await store.get("k") == _answer()  # back: the entry was kept
        finally:
            await client.aclose()
