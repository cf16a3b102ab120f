"""Store test helpers: PostgreSQL behind a TcpProxy, polling with a deadline, usage entries."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select

from qwen_gateway.store.db import Database
from qwen_gateway.store.tables import UsageRow
from qwen_gateway.store.usage import UsageEntry
from support.tcp_proxy import TcpProxy


@contextmanager
def proxied(postgres_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """(proxy, URL of the same database through it)."""
    parts = urlsplit(postgres_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
        yield proxy, urlunsplit(parts._replace(netloc=netloc))


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 60) -> None:
    """Poll ``check`` until it holds; fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 (polling a condition, with a deadline)
            await asyncio.sleep(0.02)


def usage(request_id: str, **fields: object) -> UsageEntry:
    values: dict[str, object] = {
        "ts": datetime.now(UTC), "request_id": request_id, "principal": "key:1", "key_id": 1,
        "model": "m", "deployment": "m", "path": "/v1/chat/completions", "status": 200,
        "prompt_tokens": 3, "completion_tokens": 4, "latency_ms": 1.0, "ttft_ms": None,
        "cancelled": False, "stream": False,
    }  # fmt: skip
    return UsageEntry(**{**values, **fields})  # type: ignore[arg-type]


async def stored(url: str, prefix: str) -> Counter[str]:
    """How many usage rows each request id starting with ``prefix`` has, read directly."""
    db = Database(url)
    try:
        async with db.sessions() as session:
            ids = await session.scalars(
                select(UsageRow.request_id).where(UsageRow.request_id.startswith(prefix))
            )
            return Counter(ids)
    finally:
        await db.aclose()
