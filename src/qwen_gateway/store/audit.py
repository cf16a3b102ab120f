"""The audit trail: key lifecycle, admin actions, authentication failures. Metadata only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from qwen_gateway.store.db import Database
from qwen_gateway.store.sanitise import clean_row
from qwen_gateway.store.tables import AuditRow


@dataclass(frozen=True, slots=True)
class AuditEntry:
    ts: datetime
    action: str
    actor: str
    target: str | None = None
    client: str | None = None
    details: dict[str, Any] | None = None


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_many(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        rows = [
            clean_row(AuditRow, {f: getattr(e, f) for f in AuditEntry.__slots__}) for e in entries
        ]
        async with self._db.sessions.begin() as session:
            await session.execute(insert(AuditRow), rows)

    async def recent(self, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if action is not None:
            query = query.where(AuditRow.action == action)
        async with self._db.sessions() as session:
            rows = await session.scalars(query)
            return [
                {
                    "id": r.id,
                    "ts": r.ts.isoformat(),
                    "action": r.action,
                    "actor": r.actor,
                    "target": r.target,
                    "client": r.client,
                    "details": r.details,
                }
                for r in rows
            ]
