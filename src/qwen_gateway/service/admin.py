"""The admin use cases: API keys (create, list, show, update limits, revoke, rotate), usage
reports and the audit trail. The admin API (``api/admin.py``) and the CLI (``cli/admin.py``)
both call this service; it writes the audit trail of what they do (who, from where, to which
key)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.policy.keys import KeyManager
from qwen_gateway.store.audit import AuditEntry, AuditRepository
from qwen_gateway.store.keys import KeyRecord
from qwen_gateway.store.usage import GroupBy, UsageRepository

GROUPS: tuple[str, ...] = ("key", "model", "deployment", "arm", "day", "hour")
USAGE_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cancelled", "errors")
MAX_AUDIT_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks (a principal id, ``cli`` or ``bootstrap``) and from where (None: this host)."""

    id: str
    client: str | None = None


CLI = Actor("cli")


class AdminService:
    def __init__(
        self,
        keys: KeyManager,
        usage: UsageRepository,
        audit: AuditRepository,
        record: Callable[[AuditEntry], None],
        flush: Callable[[], Any],
    ) -> None:
        """``record`` queues an audit entry on the background writer; ``flush`` (awaited)
        writes what is queued, so that reports include the requests that just ended."""
        self._keys = keys
        self._usage = usage
        self._audit = audit
        self._record = record
        self._flush = flush

    # ---- keys ----------------------------------------------------------------

    async def create_key(
        self,
        name: str,
        actor: Actor,
        *,
        role: str = "inference",
        models: tuple[str, ...] | None = None,
        limits: KeyLimits | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: the secret is returned here once and never stored."""
        secret, record = await self._keys.create(
            name, role=role, models=models, limits=limits, expires_at=expires_at
        )
        self._key_event("key.create", actor, record, {"role": role})
        return secret, record

    async def list_keys(self) -> list[KeyRecord]:
        return await self._keys.list()

    async def key(self, key_id: int) -> KeyRecord:
        return await self._keys.get(key_id)

    async def count_keys(self) -> int:
        return await self._keys.count()

    async def update_limits(self, key_id: int, limits: KeyLimits, actor: Actor) -> KeyRecord:
        """Replace a key's limits (None: no limit of that kind)."""
        before = await self._keys.get(key_id)
        record = await self._keys.update_limits(key_id, limits)
        changed = {
            name: [getattr(before.limits, name), getattr(limits, name)]
            for name in KeyLimits.model_fields
            if getattr(before.limits, name) != getattr(limits, name)
        }
        self._key_event("key.update", actor, record, {"limits": changed})
        return record

    async def revoke_key(self, key_id: int, actor: Actor) -> KeyRecord:
        record = await self._keys.revoke(key_id)
        self._key_event("key.revoke", actor, record)
        return record

    async def rotate_key(self, key_id: int, actor: Actor) -> tuple[str, KeyRecord]:
        secret, record = await self._keys.rotate(key_id)
        self._key_event("key.rotate", actor, record)
        return secret, record

    # ---- reports -------------------------------------------------------------

    async def usage(
        self,
        group_by: Sequence[str],
        actor: Actor,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        format: str = "json",
    ) -> list[dict[str, Any]]:
        """Requests and tokens summed per group (of :data:`GROUPS`); the export is audited."""
        groups = list(group_by)
        if any(g not in GROUPS for g in groups) or len(set(groups)) != len(groups):
            raise InvalidRequest(
                "group_by takes a comma-separated subset of key, model, deployment, arm, day, hour.",
                param="group_by",
            )
        await self._flush()  # include requests that just ended
        rows = await self._usage.report(cast(list[GroupBy], groups), since, until)
        self._event("usage.export", actor, None, {"group_by": groups, "format": format})
        return rows

    async def audit(self, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        """The latest audit events, newest first."""
        if not 1 <= limit <= MAX_AUDIT_ROWS:
            raise InvalidRequest(f"limit must be between 1 and {MAX_AUDIT_ROWS}.", param="limit")
        await self._flush()
        return await self._audit.recent(limit, action)

    # ---- the trail -----------------------------------------------------------

    def _key_event(
        self, action: str, actor: Actor, record: KeyRecord, details: dict[str, Any] | None = None
    ) -> None:
        details = {"name": record.name, "prefix": record.prefix, **(details or {})}
        self._event(action, actor, f"key:{record.id}", details)

    def _event(
        self, action: str, actor: Actor, target: str | None, details: dict[str, Any]
    ) -> None:
        self._record(AuditEntry(datetime.now(UTC), action, actor.id, target, actor.client, details))
