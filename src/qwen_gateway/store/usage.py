"""Usage records (one per request, metadata only) and the reports over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Date, case, cast, func, insert, select

from qwen_gateway.store.db import Database
from qwen_gateway.store.sanitise import clean_row
from qwen_gateway.store.tables import UsageRow

GroupBy = Literal["key", "model", "deployment", "arm", "day", "hour"]


@dataclass(frozen=True, slots=True)
class UsageEntry:
    ts: datetime
    request_id: str
    principal: str
    key_id: int | None
    model: str | None
    deployment: str | None
    path: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    cancelled: bool
    stream: bool
    arm: str | None = None  # the split arm the request was sent to, if any
    cache: str | None = None  # the response cache's verdict: "hit", "miss", "bypass"


class UsageRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_many(self, entries: Sequence[UsageEntry]) -> None:
        if not entries:
            return
        rows = [
            clean_row(UsageRow, {f: getattr(e, f) for f in UsageEntry.__slots__}) for e in entries
        ]
        async with self._db.sessions.begin() as session:
            await session.execute(insert(UsageRow), rows)

    async def request_ids(self) -> set[str]:
        async with self._db.sessions() as session:
            return set(await session.scalars(select(UsageRow.request_id)))

    async def report(
        self,
        group_by: Sequence[GroupBy],
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Requests and tokens summed per group (principal, model, deployment, split arm, UTC
        day and/or UTC hour, the hour as ``YYYY-MM-DDTHH:00``)."""
        columns: dict[str, Any] = {
            "key": UsageRow.principal,
            "model": UsageRow.model,
            "deployment": UsageRow.deployment,
            "arm": UsageRow.arm,
            "day": cast(UsageRow.ts, Date) if not self._db.is_sqlite else func.date(UsageRow.ts),
            "hour": (
                func.strftime("%Y-%m-%dT%H:00", UsageRow.ts)
                if self._db.is_sqlite
                else func.to_char(func.timezone("UTC", UsageRow.ts), 'YYYY-MM-DD"T"HH24:00')
            ),
        }
        keys = [columns[g].label(g) for g in group_by]
        query = select(
            *keys,
            func.count(UsageRow.id).label("requests"),
            func.coalesce(func.sum(UsageRow.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(UsageRow.completion_tokens), 0).label("completion_tokens"),
            func.sum(case((UsageRow.cancelled, 1), else_=0)).label("cancelled"),
            func.sum(case((UsageRow.status >= 400, 1), else_=0)).label("errors"),
        )
        if since is not None:
            query = query.where(UsageRow.ts >= since)
        if until is not None:
            query = query.where(UsageRow.ts < until)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        async with self._db.sessions() as session:
            result = await session.execute(query)
            out = []
            for row in result.mappings():
                item = dict(row)
                if "day" in item and item["day"] is not None:
                    item["day"] = str(item["day"])
                for k in ("requests", "prompt_tokens", "completion_tokens", "cancelled", "errors"):
                    item[k] = int(item[k] or 0)
                out.append(item)
            return out
