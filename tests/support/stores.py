"""The real PostgreSQL and Redis of this machine, for the store, limiter and usage tests.

Each test session gets its own PostgreSQL database (dropped afterwards) and its own Redis
logical database (flushed). With CI set, a missing server is a failure; otherwise the tests
are skipped with instructions to start it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import pytest

PG_ADMIN = os.environ.get("QG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("QG_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = 13

START_PG = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
START_REDIS = "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"


def _missing(what: str, how: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {exc}). Start it with: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import asyncpg

    name = f"qg_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        _missing("PostgreSQL", START_PG, exc)
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = f"{REDIS_BASE}/{REDIS_DB}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.flushdb()
        client.close()
    except redis.RedisError as exc:
        _missing("Redis", START_REDIS, exc)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'gateway.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["local", "redis"])
def limiter_backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(backend, redis url): each limiter test runs in-process and on Redis."""
    if request.param == "local":
        return "local", None
    url: str = request.getfixturevalue("redis_url")
    return "redis", url
