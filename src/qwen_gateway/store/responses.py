"""Stored Responses API responses, each the caller's own: every read and delete names the
principal, and an expired response is never returned (and is deleted by :meth:`purge`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import DBAPIError

from qwen_gateway.core.jsonbytes import dumps, loads
from qwen_gateway.core.responses import StoredResponse
from qwen_gateway.errors import ServiceUnavailable
from qwen_gateway.store.db import Database
from qwen_gateway.store.sanitise import clean_text
from qwen_gateway.store.tables import StoredResponseRow


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@contextmanager
def _reachable() -> Iterator[None]:
    """A database that cannot be reached is a 503 for the client, not a 500."""
    try:
        yield
    except (DBAPIError, OSError, TimeoutError) as exc:
        raise ServiceUnavailable(
            "The response store is unreachable; retry the request.",
            code="storage_unavailable",
        ) from exc


class ResponseRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, stored: StoredResponse) -> None:
        body = dumps(
            {
                "response": stored.response,
                "input_items": stored.input_items,
                "conversation": stored.conversation,
            }
        )
        row = {
            "id": stored.id,
            "principal": clean_text(stored.principal, 300),
            "created_at": stored.created_at,
            "expires_at": stored.expires_at,
            "body": body,
        }
        with _reachable():
            async with self._db.sessions.begin() as session:
                await session.execute(insert(StoredResponseRow), [row])

    async def get(self, principal: str, response_id: str, now: datetime) -> StoredResponse | None:
        query = select(StoredResponseRow).where(
            StoredResponseRow.id == response_id,
            StoredResponseRow.principal == clean_text(principal, 300),
            StoredResponseRow.expires_at > now,
        )
        with _reachable():
            async with self._db.sessions() as session:
                row = (await session.scalars(query)).first()
        if row is None:
            return None
        body: dict[str, Any] = loads(row.body)
        return StoredResponse(
            id=row.id,
            principal=row.principal,
            response=body["response"],
            input_items=body["input_items"],
            conversation=body["conversation"],
            created_at=_aware(row.created_at),
            expires_at=_aware(row.expires_at),
        )

    async def delete(self, principal: str, response_id: str, now: datetime) -> bool:
        """An expired response is not there to delete (the purge removes it)."""
        with _reachable():
            async with self._db.sessions.begin() as session:
                result = await session.execute(
                    delete(StoredResponseRow).where(
                        StoredResponseRow.id == response_id,
                        StoredResponseRow.principal == clean_text(principal, 300),
                        StoredResponseRow.expires_at > now,
                    )
                )
                return bool(getattr(result, "rowcount", 0))

    async def purge(self, before: datetime) -> int:
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                delete(StoredResponseRow).where(StoredResponseRow.expires_at <= before)
            )
            return int(getattr(result, "rowcount", 0) or 0)
