"""API keys: rows hold a SHA-256 hash of the key, never the key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.store.db import Database
from qwen_gateway.store.sanitise import clean_json, clean_text
from qwen_gateway.store.tables import ApiKeyRow


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    name: str
    prefix: str
    key_hash: str
    role: str
    models: tuple[str, ...] | None
    limits: KeyLimits
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None


def _record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        key_hash=row.key_hash,
        role=row.role,
        models=tuple(row.models) if row.models is not None else None,
        limits=KeyLimits(
            rpm=row.rpm,
            tpm=row.tpm,
            max_concurrency=row.max_concurrency,
            daily_tokens=row.daily_tokens,
            monthly_tokens=row.monthly_tokens,
            default_max_tokens=row.default_max_tokens,
            tier=row.tier,
        ),
        expires_at=_aware(row.expires_at),
        created_at=_aware(row.created_at) or row.created_at,
        revoked_at=_aware(row.revoked_at),
    )


def _aware(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    from datetime import UTC

    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        *,
        name: str,
        prefix: str,
        key_hash: str,
        role: str,
        models: tuple[str, ...] | None,
        limits: KeyLimits,
        expires_at: datetime | None,
        created_at: datetime,
    ) -> KeyRecord:
        row = ApiKeyRow(
            name=clean_text(name, 200), prefix=prefix, key_hash=key_hash, role=role,
            models=clean_json(list(models)) if models is not None else None,
            rpm=limits.rpm, tpm=limits.tpm, max_concurrency=limits.max_concurrency,
            daily_tokens=limits.daily_tokens, monthly_tokens=limits.monthly_tokens,
            default_max_tokens=limits.default_max_tokens, tier=limits.tier,
            expires_at=expires_at, created_at=created_at,
        )  # fmt: skip
        async with self._db.sessions.begin() as session:
            session.add(row)
            await session.flush()
            return _record(row)

    async def by_hash(self, key_hash: str) -> KeyRecord | None:
        async with self._db.sessions() as session:
            row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
            return _record(row) if row is not None else None

    async def get(self, key_id: int) -> KeyRecord | None:
        async with self._db.sessions() as session:
            row = await session.get(ApiKeyRow, key_id)
            return _record(row) if row is not None else None

    async def list(self) -> list[KeyRecord]:
        async with self._db.sessions() as session:
            rows = await session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))
            return [_record(r) for r in rows]

    async def count(self) -> int:
        async with self._db.sessions() as session:
            return int(await session.scalar(select(func.count(ApiKeyRow.id))) or 0)

    async def revoke(self, key_id: int, when: datetime) -> KeyRecord | None:
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=when)
            )
        return await self.get(key_id)

    async def replace_secret(self, key_id: int, prefix: str, key_hash: str) -> KeyRecord | None:
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id)
                .values(prefix=prefix, key_hash=key_hash)
            )
        return await self.get(key_id)

    async def set_limits(self, key_id: int, limits: KeyLimits) -> KeyRecord | None:
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id)
                .values(
                    rpm=limits.rpm, tpm=limits.tpm, max_concurrency=limits.max_concurrency,
                    daily_tokens=limits.daily_tokens, monthly_tokens=limits.monthly_tokens,
                    default_max_tokens=limits.default_max_tokens, tier=limits.tier,
                )
            )  # fmt: skip
        return await self.get(key_id)
