"""The database handle: an async engine, sessions, and migrations applied at start-up."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 7_324_115  # a PostgreSQL advisory lock: one replica migrates at a time


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _async_url(url: str) -> str:
    """Accept the usual URL spellings and pick the async driver."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


class Database:
    def __init__(self, url: str) -> None:
        self.url = _async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        options: dict[str, Any] = {"pool_pre_ping": True}
        if not self.is_sqlite:
            options.update(pool_size=10, max_overflow=20)
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        database = self.engine.url.database
        if self.is_sqlite and database and database != ":memory:":
            path = Path(database).expanduser()
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # readable by this user only (SQLite gives its -wal and -shm files the same mode)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.ping_ttl, self.ping_seconds = 2.0, 1.0
        self._checked: tuple[float, bool] | None = None  # (when, reachable)
        self._checking = asyncio.Lock()
        self._probe: asyncio.Task[None] | None = None

    async def _ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def reachable(self) -> bool:
        """Whether ``SELECT 1`` answers within ``ping_seconds``. The answer is kept for
        ``ping_ttl`` seconds and one check runs at a time, so probes cost no query each.

        A probe that takes longer is not cancelled: it goes on in the background (a later
        check waits for it) and returns its connection to the pool when it ends. Cancelling
        it while the driver opens a connection would leave that connection neither pooled
        nor closed."""
        async with self._checking:
            now = time.monotonic()
            if self._checked is not None and now - self._checked[0] < self.ping_ttl:
                return self._checked[1]
            if self._probe is None or self._probe.done():
                self._probe = asyncio.create_task(self._ping(), name="database-ping")
                self._probe.add_done_callback(_retrieve)
            try:
                await asyncio.wait_for(asyncio.shield(self._probe), self.ping_seconds)
                ok = True
            except Exception as exc:
                if self._checked is None or self._checked[1]:
                    log.error("the database is unreachable (%s)", type(exc).__name__)
                ok = False
            self._checked = (time.monotonic(), ok)
            return ok

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent; safe with several replicas)."""
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_ID})"))
            await conn.run_sync(_upgrade)

    async def aclose(self) -> None:
        probe = self._probe
        if probe is not None and not probe.done():  # let it return its connection first
            try:
                await asyncio.wait_for(asyncio.shield(probe), self.ping_seconds)
            except Exception as exc:  # reported by reachable() already; closing goes on
                log.info("the last database probe ended with %s at close", type(exc).__name__)
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        await self.engine.dispose()


def _retrieve(task: asyncio.Task[None]) -> None:
    """A probe's failure is reported by ``reachable``; mark it retrieved when no check was
    waiting any more (a probe that outlived its check)."""
    if not task.cancelled():
        task.exception()


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
