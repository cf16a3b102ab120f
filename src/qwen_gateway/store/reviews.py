"""The review queue's rows. Content arrives here already encrypted; this module never sees
plaintext."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import delete, func, insert, select, update

from qwen_gateway.store.db import Database
from qwen_gateway.store.sanitise import clean_row, clean_text
from qwen_gateway.store.tables import ReviewRow

Status = Literal["pending", "approved", "rejected"]
Mode = Literal["hold", "deliver_and_review"]
Direction = Literal["input", "output"]


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    id: str
    created_at: datetime
    status: Status
    mode: Mode
    direction: Direction
    category: str
    principal: str
    key_id: int | None
    deployment: str | None
    request_id: str
    prompt_ciphertext: bytes | None = None
    answer_ciphertext: bytes | None = None
    decided_at: datetime | None = None
    reviewer: str | None = None
    reason: str | None = None


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _record(row: ReviewRow) -> ReviewRecord:
    return ReviewRecord(
        id=row.id,
        created_at=_aware(row.created_at) or row.created_at,
        status=row.status,  # type: ignore[arg-type]  # written by this module only
        mode=row.mode,  # type: ignore[arg-type]
        direction=row.direction,  # type: ignore[arg-type]
        category=row.category,
        principal=row.principal,
        key_id=row.key_id,
        deployment=row.deployment,
        request_id=row.request_id,
        prompt_ciphertext=row.prompt_ciphertext,
        answer_ciphertext=row.answer_ciphertext,
        decided_at=_aware(row.decided_at),
        reviewer=row.reviewer,
        reason=row.reason,
    )


class ReviewRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, record: ReviewRecord) -> None:
        row = clean_row(ReviewRow, {f: getattr(record, f) for f in ReviewRecord.__slots__})
        async with self._db.sessions.begin() as session:
            await session.execute(insert(ReviewRow), [row])

    async def get(self, review_id: str) -> ReviewRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(ReviewRow, review_id)
            return _record(row) if row is not None else None

    async def list(
        self,
        *,
        status: Status | None = None,
        category: str | None = None,
        key_id: int | None = None,
        limit: int = 100,
    ) -> list[ReviewRecord]:
        """Matching items, oldest first (the order a reviewer works through a queue)."""
        query = select(ReviewRow).order_by(ReviewRow.created_at, ReviewRow.id).limit(limit)
        if status is not None:
            query = query.where(ReviewRow.status == status)
        if category is not None:
            query = query.where(ReviewRow.category == category)
        if key_id is not None:
            query = query.where(ReviewRow.key_id == key_id)
        async with self._db.sessions() as session:
            return [_record(r) for r in await session.scalars(query)]

    async def decide(
        self, review_id: str, status: Status, reviewer: str, reason: str | None, when: datetime
    ) -> bool:
        """Mark a pending item decided; False when it is not pending (or not there), so two
        reviewers deciding at once cannot both win."""
        async with self._db.sessions.begin() as session:
            result = await session.execute(
                update(ReviewRow)
                .where(ReviewRow.id == review_id, ReviewRow.status == "pending")
                .values(
                    status=status,
                    decided_at=when,
                    reviewer=clean_text(reviewer, 300),
                    reason=clean_text(reason, 1000) if reason is not None else None,
                )
            )
            return bool(getattr(result, "rowcount", 0))

    async def purge(self, before: datetime) -> int:
        """Delete items made before ``before``; how many were deleted."""
        async with self._db.sessions.begin() as session:
            result = await session.execute(delete(ReviewRow).where(ReviewRow.created_at < before))
            return int(getattr(result, "rowcount", 0) or 0)

    async def pending(self) -> tuple[int, datetime | None]:
        """How many items are pending, and when the oldest of them was made."""
        query = select(func.count(ReviewRow.id), func.min(ReviewRow.created_at)).where(
            ReviewRow.status == "pending"
        )
        async with self._db.sessions() as session:
            count, oldest = (await session.execute(query)).one()
            return int(count or 0), _aware(oldest)
