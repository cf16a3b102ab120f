"""Keeping a limiter honest through Redis outages: concurrency leases renewed while their
requests run, settles that failed retried until the limiter is back, and an outage answered
with 503 instead of an internal error.

``LeaseKeeper`` wraps a limiter (``RedisLimiter`` or ``LocalLimiter``). Every permit that holds a
concurrency lease is renewed every ``lease_seconds / 3`` by one task for the whole process (one
limiter call for all live permits), so leases can be short: those of a crashed replica expire
within one lease period. A settle that fails because the limiter is unreachable is queued and
retried with backoff, so the completion tokens are charged and the leases released once it is
back; the queue is bounded (the oldest is dropped: its leases then simply expire).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from typing import Protocol

from qwen_gateway.errors import ServiceUnavailable
from qwen_gateway.policy.ratelimit import Limiter, Permit, Subject

log = logging.getLogger(__name__)


def outage() -> tuple[type[Exception], ...]:
    """What an unreachable limiter raises: these are retried, anything else is a bug and is
    not. Evaluated when an exception is matched; redis (~7 MB) is not imported for it: while
    no Redis client is loaded, no Redis error can be raised."""
    errors = sys.modules.get("redis.exceptions")
    if errors is None:
        return (ConnectionError, TimeoutError)
    return (
        errors.ConnectionError,
        errors.TimeoutError,
        errors.ReadOnlyError,  # a replica during a failover
        errors.BusyLoadingError,
        ConnectionError,
        TimeoutError,
    )


RETRY_AFTER = 5  # seconds, told to clients while the limiter is unreachable


class SettleObserver(Protocol):
    def deferred_settle(self, outcome: str) -> None:
        """outcome: ``queued`` (a settle failed), ``retried`` (a queued one went through
        later), ``dropped`` (the queue was full, or it failed for another reason)."""


class LeaseKeeper:
    """A limiter (the ``Limiter`` protocol) around ``inner``; see the module docstring."""

    def __init__(
        self,
        inner: Limiter,
        lease_seconds: float,
        *,
        queue_size: int = 10_000,
        backoff: tuple[float, float] = (0.2, 10.0),
        observer: SettleObserver | None = None,
    ) -> None:
        self._inner = inner
        self._interval = lease_seconds / 3
        self._backoff = backoff
        self._observer = observer
        self._live: dict[str, Permit] = {}  # by lease: permits holding concurrency leases
        #: (permit, completion tokens to settle with, or None to release it)
        self._pending: deque[tuple[Permit, int | None]] = deque()
        self._queue_size = queue_size
        self._renewing: asyncio.Task[None] | None = None
        self._retrying: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Settles waiting for the limiter to come back."""
        return len(self._pending)

    async def acquire(
        self,
        subjects: Sequence[Subject],
        prompt_tokens: int,
        reserve: int = 0,
        sequences: int = 1,
    ) -> Permit:
        try:
            permit = await self._inner.acquire(subjects, prompt_tokens, reserve, sequences)
        except outage() as exc:
            log.warning("rate limiter unreachable, refusing the request: %r", exc)
            raise ServiceUnavailable(
                "Rate limits cannot be checked right now. Retry shortly.",
                headers={"Retry-After": str(RETRY_AFTER)},
            ) from exc
        if any(s.limits.max_concurrency is not None for s in permit.subjects):
            self._live[permit.lease] = permit
            if self._renewing is None or self._renewing.done():
                self._renewing = asyncio.create_task(self._renew_loop())
        return permit

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        self._live.pop(permit.lease, None)
        if permit.settled:
            return
        try:
            await self._inner.settle(permit, completion_tokens)
        except outage() as exc:
            log.warning("settling rate limits failed, will retry: %r", exc)
            self._defer(permit, completion_tokens)

    async def release(self, permit: Permit) -> None:
        self._live.pop(permit.lease, None)
        if permit.settled:
            return
        try:
            await self._inner.release(permit)
        except outage() as exc:
            log.warning("releasing a rate-limit admission failed, will retry: %r", exc)
            self._defer(permit, None)

    async def renew(self, permits: Sequence[Permit]) -> None:
        await self._inner.renew(permits)

    async def renew_live(self) -> None:
        """Extend the lease of every permit still running (what the heartbeat does)."""
        permits = list(self._live.values())
        if not permits:
            return
        try:
            await self._inner.renew(permits)
        except outage() as exc:
            log.warning("renewing %d concurrency leases failed: %r", len(permits), exc)
        except Exception:
            log.exception("renewing %d concurrency leases failed", len(permits))

    async def retry_pending(self) -> bool:
        """Settle what is queued, oldest first; False when the limiter is still unreachable."""
        while self._pending:
            permit, tokens = self._pending[0]
            permit.settled = False  # the failed attempt marked it settled
            try:
                if tokens is None:
                    await self._inner.release(permit)
                else:
                    await self._inner.settle(permit, tokens)
            except outage() as exc:
                log.info("limiter still unreachable, %d settles queued: %r", self.pending, exc)
                return False
            except Exception:
                log.exception("a queued settle failed; dropping it")
                self._pending.popleft()
                self._count("dropped")
            else:
                self._pending.popleft()
                self._count("retried")
        return True

    async def aclose(self) -> None:
        for task in (self._renewing, self._retrying):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if self._pending and not await self.retry_pending():
            log.error("%d settles could not be written before shutdown", self.pending)
        await self._inner.aclose()

    def _defer(self, permit: Permit, completion_tokens: int | None) -> None:
        # it stays marked settled: only the queue settles it (the retry clears the mark)
        if len(self._pending) >= self._queue_size:
            self._pending.popleft()
            log.error("settle queue full (%d): dropping the oldest", self._queue_size)
            self._count("dropped")
        self._pending.append((permit, completion_tokens))
        self._count("queued")
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.create_task(self._retry_loop())

    def _count(self, outcome: str) -> None:
        if self._observer is not None:
            self._observer.deferred_settle(outcome)

    async def _renew_loop(self) -> None:
        while self._live:
            await asyncio.sleep(self._interval)
            await self.renew_live()

    async def _retry_loop(self) -> None:
        delay, most = self._backoff
        while True:
            await asyncio.sleep(delay)
            if await self.retry_pending():
                return
            delay = min(delay * 2, most)
