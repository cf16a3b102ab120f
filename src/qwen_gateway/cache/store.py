"""Where cached answers live: in this process (an LRU bounded in bytes) or in Redis (shared by
every replica). Both keep an entry for a TTL; both take the same compact encoding of an answer
(orjson of its events and usage), so the byte bound and the per-entry cap measure what is kept.

A store never fails a request: Redis errors are a miss (or a skipped write), counted and
logged as a warning.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.exceptions import RedisError

from qwen_gateway.cache.decision import Stored
from qwen_gateway.core.types import ChoiceFinished, TextDelta, ToolCallDelta, Usage

log = logging.getLogger(__name__)

#: What one entry costs besides its key and value (the dict slot, the tuple, the objects):
#: counted so that many tiny entries cannot exceed the byte bound.
ENTRY_OVERHEAD = 200


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer as the engine gave it: its events (text, tool calls, finishes), its usage,
    and the deployment that served it."""

    events: tuple[Stored, ...]
    usage: Usage
    deployment: str | None = None


def encode(answer: CachedAnswer) -> bytes:
    events: list[list[Any]] = []
    for e in answer.events:
        if isinstance(e, TextDelta):
            events.append([0, e.index, e.text])
        elif isinstance(e, ToolCallDelta):
            events.append([1, e.index, e.call_index, e.id, e.name, e.arguments])
        else:
            events.append([2, e.index, e.reason])
    u = answer.usage
    return orjson.dumps(
        {"v": 1, "d": answer.deployment, "u": [u.prompt_tokens, u.completion_tokens], "e": events}
    )


def decode(data: bytes) -> CachedAnswer:
    """The answer ``encode`` wrote; ValueError (or KeyError) for bytes it did not write."""
    raw = orjson.loads(data)
    if raw.get("v") != 1:
        raise ValueError("unknown cache entry version")
    events: list[Stored] = []
    for item in raw["e"]:
        kind = item[0]
        if kind == 0:
            events.append(TextDelta(int(item[1]), str(item[2])))
        elif kind == 1:
            events.append(ToolCallDelta(int(item[1]), int(item[2]), *map(str, item[3:6])))
        elif kind == 2:
            events.append(ChoiceFinished(int(item[1]), item[2]))
        else:
            raise ValueError(f"unknown cache event kind {kind!r}")
    prompt, completion = raw["u"]
    return CachedAnswer(tuple(events), Usage(int(prompt), int(completion)), raw["d"])


class StoreObserver(Protocol):
    """Where a store's evictions and errors are counted (the metrics)."""

    def cache_evicted(self, count: int) -> None: ...

    def cache_error(self, operation: str) -> None: ...


class _Quiet:
    def cache_evicted(self, count: int) -> None:
        return None

    def cache_error(self, operation: str) -> None:
        return None


class CacheStore(Protocol):
    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, answer: CachedAnswer) -> bool:
        """Keep ``answer`` under ``key`` for the TTL; False when it was not kept (too large,
        or the backend failed)."""
        ...


class LocalStore:
    """An in-process LRU of answers, at most ``max_bytes`` in all (keys, encoded answers and
    a fixed overhead per entry), each for ``ttl`` seconds; answers larger than
    ``max_entry_bytes`` (encoded) are not kept. The least recently used go first when room
    is needed."""

    def __init__(
        self,
        max_bytes: int,
        ttl: float,
        max_entry_bytes: int,
        observer: StoreObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self._ttl = ttl
        self._max_entry = max_entry_bytes
        self._observer: StoreObserver = observer or _Quiet()
        self._clock = clock
        # key -> (expires at, the answer, its size in bytes)
        self._entries: OrderedDict[str, tuple[float, CachedAnswer, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CachedAnswer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, answer, _ = found
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, answer: CachedAnswer) -> bool:
        encoded = len(encode(answer))
        size = len(key) + encoded + ENTRY_OVERHEAD
        if encoded > self._max_entry or size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        evicted = 0
        while self.bytes + size > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
            evicted += 1
        if evicted:
            self._observer.cache_evicted(evicted)
        self._entries[key] = (self._clock() + self._ttl, answer, size)
        self.bytes += size
        return True

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size


class RedisClient(Protocol):
    """The part of ``redis.asyncio.Redis`` the store uses."""

    async def get(self, name: str) -> Any: ...

    async def set(self, name: str, value: bytes, px: int | None = None) -> Any: ...


class RedisStore:
    """Answers in Redis, shared by every gateway process using the same ``prefix``:
    ``SET <prefix>:<key> <encoded answer> PX <ttl>``. Entries larger than ``max_entry_bytes``
    are not kept. A Redis error is a miss (or a write skipped): counted, logged, never raised."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        ttl: float,
        max_entry_bytes: int,
        observer: StoreObserver | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix.rstrip(":") + ":"
        self._ttl_ms = max(1, int(ttl * 1000))
        self._max_entry = max_entry_bytes
        self._observer: StoreObserver = observer or _Quiet()

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            data = await self._client.get(self._prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return None
        if data is None:
            return None
        try:
            return decode(data)
        except (ValueError, KeyError, TypeError) as exc:
            self._failed("decode", exc)
            return None

    async def put(self, key: str, answer: CachedAnswer) -> bool:
        data = encode(answer)
        if len(data) > self._max_entry:
            return False
        try:
            await self._client.set(self._prefix + key, data, px=self._ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("set", exc)
            return False
        return True

    def _failed(self, operation: str, exc: Exception) -> None:
        self._observer.cache_error(operation)
        log.warning("response cache: Redis %s failed (%s): served as a miss", operation,
                    type(exc).__name__)  # fmt: skip
