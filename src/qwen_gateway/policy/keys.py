"""API keys: creation (shown once), SHA-256 at rest, constant-time checks, quick revocation.

Lookups are cached for at most ``cache_ttl`` (1 s by default), and a revocation or rotation is
also announced on the invalidation bus (Redis pub/sub across replicas), so it takes effect on
every replica within a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, Protocol

from qwen_gateway.core.limits import KeyLimits
from qwen_gateway.errors import InvalidRequest, NotFound
from qwen_gateway.policy.principal import Principal
from qwen_gateway.store.keys import KeyRecord, KeyRepository

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-qg-"
VISIBLE = len(KEY_PREFIX) + 6  # "sk-qg-AbCdEf": enough to tell keys apart, useless to attack
MAX_NAME = 200
MAX_ID = 2**31 - 1  # the id column is INTEGER: larger ids name no key (and overflow drivers)
# bidi embeddings, overrides and isolates: they reorder how a name reads in a terminal
_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


#: the largest value each key limit can hold (its database column's range)
LIMIT_RANGES = {
    "rpm": MAX_ID, "tpm": MAX_ID, "max_concurrency": MAX_ID, "daily_tokens": 2**63 - 1,
    "monthly_tokens": 2**63 - 1, "default_max_tokens": MAX_ID,
}  # fmt: skip


class InvalidationBus(Protocol):
    async def publish(self, key_hash: str) -> None: ...

    async def start(self, on_message: Callable[[str], None]) -> None: ...

    async def aclose(self) -> None: ...


class LocalBus:
    """One process: invalidation is immediate."""

    def __init__(self) -> None:
        self._listener: Callable[[str], None] | None = None

    async def publish(self, key_hash: str) -> None:
        if self._listener is not None:
            self._listener(key_hash)

    async def start(self, on_message: Callable[[str], None]) -> None:
        self._listener = on_message

    async def aclose(self) -> None:
        self._listener = None


class RedisBus:
    """Several replicas: revocations go out on a Redis pub/sub channel,
    ``<limits.redis_prefix>:key-invalidations``. A failed publish is logged, not raised (the
    key cache TTL bounds the delay); the listener resubscribes with backoff after an outage."""

    def __init__(
        self, redis: Any, prefix: str = "qwen-gateway", backoff: tuple[float, float] = (0.1, 5.0)
    ) -> None:
        self._redis = redis
        self.channel = f"{prefix}:key-invalidations"
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None

    async def publish(self, key_hash: str) -> None:
        import redis.exceptions  # only a Redis bus is here: redis is loaded already

        try:
            await self._redis.publish(self.channel, key_hash)
        except redis.exceptions.RedisError as exc:
            log.warning("announcing a key invalidation failed (caches expire anyway): %r", exc)

    async def start(self, on_message: Callable[[str], None]) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel)
        self._task = asyncio.create_task(self._listen(pubsub, on_message))

    async def _listen(self, pubsub: Any, on_message: Callable[[str], None]) -> None:
        import redis.exceptions  # only a Redis bus is here: redis is loaded already

        delay, most = self._backoff
        while True:
            try:
                if pubsub is None:
                    pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                    await pubsub.subscribe(self.channel)
                    log.info("key invalidation channel resubscribed")
                    delay = self._backoff[0]
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        data = message["data"]
                        on_message(data.decode() if isinstance(data, bytes) else str(data))
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
            ) as exc:
                log.warning("key invalidation channel lost, resubscribing in %.1fs: %r", delay, exc)
            except Exception:
                log.exception("key invalidation listener failed, resubscribing in %.1fs", delay)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception as exc:  # the connection is gone already
                        log.debug("closing the invalidation subscription: %r", exc)
                    pubsub = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, most)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


def principal_of(record: KeyRecord) -> Principal:
    lim = record.limits
    return Principal(
        id=f"key:{record.id}",
        role="admin" if record.role == "admin" else "inference",
        models=frozenset(record.models) if record.models is not None else None,
        limits=lim.rates,
        key_id=record.id,
        default_max_tokens=lim.default_max_tokens,
        tier=lim.tier,
    )


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as the admin API and CLI show it: never the secret or its hash."""
    lim = record.limits
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix + "…",
        "role": record.role,
        "models": list(record.models) if record.models is not None else None,
        "rpm": lim.rpm,
        "tpm": lim.tpm,
        "max_concurrency": lim.max_concurrency,
        "daily_tokens": lim.daily_tokens,
        "monthly_tokens": lim.monthly_tokens,
        "default_max_tokens": lim.default_max_tokens,
        "tier": lim.tier,
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "created_at": record.created_at.isoformat(),
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "status": status_of(record, datetime.now(UTC)),
    }


def status_of(record: KeyRecord, now: datetime) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


class KeyManager:
    def __init__(
        self,
        repo: KeyRepository,
        bus: InvalidationBus,
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repo = repo
        self._bus = bus
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    async def start(self) -> None:
        await self._bus.start(self._forget)

    async def aclose(self) -> None:
        await self._bus.aclose()

    def _forget(self, key_hash: str) -> None:
        self._cache.pop(key_hash, None)

    # ---- lifecycle ----------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        role: str = "inference",
        models: tuple[str, ...] | None = None,
        limits: KeyLimits | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: the secret is returned here once and never stored (the admin service
        writes the audit trail)."""
        name = _clean_name(name)
        limits = limits or KeyLimits()
        if role not in ("inference", "admin"):
            raise InvalidRequest("role must be 'inference' or 'admin'.", param="role")
        _check_limits(limits)
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        secret = new_secret()
        record = await self._repo.add(
            name=name, prefix=secret[:VISIBLE], key_hash=hash_key(secret), role=role,
            models=models, limits=limits, expires_at=expires_at, created_at=datetime.now(UTC),
        )  # fmt: skip
        return secret, record

    async def list(self) -> list[KeyRecord]:
        return await self._repo.list()

    async def get(self, key_id: int) -> KeyRecord:
        record = await self._repo.get(key_id) if 1 <= key_id <= MAX_ID else None
        if record is None:
            raise NotFound(f"No key with id {key_id}.", param="id")
        return record

    async def revoke(self, key_id: int) -> KeyRecord:
        record = await self.get(key_id)
        revoked = await self._repo.revoke(key_id, datetime.now(UTC))
        assert revoked is not None
        self._forget(record.key_hash)
        await self._bus.publish(record.key_hash)
        return revoked

    async def rotate(self, key_id: int) -> tuple[str, KeyRecord]:
        """A new secret for the same key (id, limits, usage history); the old one stops working."""
        record = await self.get(key_id)
        if record.revoked_at is not None:
            raise InvalidRequest("A revoked key cannot be rotated.", param="id")
        secret = new_secret()
        rotated = await self._repo.replace_secret(key_id, secret[:VISIBLE], hash_key(secret))
        assert rotated is not None
        self._forget(record.key_hash)
        await self._bus.publish(record.key_hash)
        return secret, rotated

    async def update_limits(self, key_id: int, limits: KeyLimits) -> KeyRecord:
        """New limits for a key; every replica applies them within a second."""
        _check_limits(limits)
        record = await self.get(key_id)
        updated = await self._repo.set_limits(key_id, limits)
        assert updated is not None
        self._forget(record.key_hash)
        await self._bus.publish(record.key_hash)
        return updated

    async def count(self) -> int:
        return await self._repo.count()

    # ---- checks -------------------------------------------------------------

    async def lookup(self, secret: str) -> KeyRecord | None:
        """The active key for ``secret``, or None (unknown, revoked or expired)."""
        digest = hash_key(secret)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._ttl:
            record = cached[1]
        else:
            record = await self._repo.by_hash(digest)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = (now, record)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        if status_of(record, datetime.now(UTC)) != "active":
            return None
        return record


def _check_limits(limits: KeyLimits) -> None:
    for field_name, most in LIMIT_RANGES.items():
        value = getattr(limits, field_name)
        if value is not None and not 1 <= value <= most:
            raise InvalidRequest(f"{field_name} must be between 1 and {most}.", param=field_name)
    # model_copy (an update) skips the field's own check: the tier is checked again here
    try:
        KeyLimits.model_validate({"tier": limits.tier})
    except ValueError:
        raise InvalidRequest(
            "tier is 1–64 letters, digits and . _ -, starting with a letter or digit.",
            param="tier",
        ) from None


def _clean_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidRequest("A key needs a name.", param="name")
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"A key name has at most {MAX_NAME} characters.", param="name")
    if any(ord(c) < 32 or 127 <= ord(c) <= 159 or c in _BIDI for c in name):
        raise InvalidRequest(
            "A key name cannot hold control or bidirectional-override characters.", param="name"
        )
    return name
