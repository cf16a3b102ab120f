"""Redis behind a ``TcpProxy``, to cut and restore it, and polling a condition with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from support.tcp_proxy import TcpProxy


@contextmanager
def proxied_redis(redis_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """(proxy, the URL of the same Redis database through the proxy)."""
    parts = urlsplit(redis_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        yield proxy, parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, limit: float = 30
) -> None:
    """Poll until ``condition()`` holds; the limit bounds a hang, it is not a timing assertion."""
    deadline = time.monotonic() + limit
    while not await condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)
