"""The account stage, last in the pipeline: when a request has ended, however it ended, its
usage is recorded and the limits permit it holds is settled.

It also keeps the one count of requests in flight (``/metrics`` reads it), so that shutdown
can wait for the requests it cut off to account (:meth:`Accounting.idle`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.policy.principal import Principal
from qwen_gateway.policy.ratelimit import Permit
from qwen_gateway.store.usage import UsageEntry

log = logging.getLogger(__name__)

#: Puts one usage entry on the background writer's queue (never waits for the database).
UsageSink = Callable[[UsageEntry], None]
#: Settles a permit with the completion tokens the request used.
Settle = Callable[[Permit, int], Awaitable[None]]


def accounted(method: str, endpoint: str | None) -> bool:
    """Whether a request leaves a usage entry: the API's POST routes (generation)."""
    return method == "POST" and endpoint is not None and endpoint.startswith("/v1/")


class Accounting:
    def __init__(self, usage: UsageSink, settle: Settle) -> None:
        self._usage = usage
        self._settle = settle
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        """A request has begun (the edge calls this once per request, before any stage)."""
        self.in_flight += 1
        self._idle.clear()

    async def finish(
        self, record: RequestRecord, endpoint: str | None, method: str, status: int
    ) -> None:
        """A request has ended with ``status``. ``endpoint`` is the path template of the route
        that took it (None: no route did)."""
        try:
            if accounted(method, endpoint):
                assert endpoint is not None
                self._usage(usage_entry(record, endpoint, status))
            permit, record.permit = record.permit, None
            if permit is not None:
                try:
                    await self._settle(permit, record.completion_tokens)
                except Exception:
                    log.exception("settling rate limits failed")
        finally:
            self.in_flight -= 1
            if self.in_flight <= 0:
                self._idle.set()

    async def idle(self) -> None:
        """Wait until every request in flight has accounted (bound it with a timeout)."""
        await self._idle.wait()


def usage_entry(record: RequestRecord, endpoint: str, status: int) -> UsageEntry:
    principal = record.principal if isinstance(record.principal, Principal) else None
    ttft = record.ttft
    return UsageEntry(
        ts=datetime.now(UTC),
        request_id=record.request_id,
        principal=principal.id if principal is not None else "anonymous",
        key_id=principal.key_id if principal is not None else None,
        model=record.model,
        deployment=record.deployment,
        path=endpoint,
        status=status,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        latency_ms=round((time.perf_counter() - record.started) * 1000, 3),
        ttft_ms=None if ttft is None else round(ttft * 1000, 3),
        cancelled=record.cancelled,
        stream=record.stream,
        arm=record.arm,
        cache=record.cache,
    )
