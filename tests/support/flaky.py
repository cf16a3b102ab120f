"""FlakyEngine: a deliberately failing wrapper around a real engine, for fault injection.

While ``broken`` is set, every request fails before its first event with ``error`` (an
unavailable replica by default), the way an unreachable upstream fails; with ``fail_after``
set, it fails after that many events instead; while ``stall`` is set (an unset event), requests
wait for it before their first event; while ``healthy`` is unset, its health check fails;
with ``mangle`` set, every event passes through it (to fake an upstream's malformed output).
Otherwise requests go to the wrapped engine. ``attempts`` counts the requests it was handed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

from qwen_gateway.core.types import EngineEvent, GenerationRequest, ModelInfo
from qwen_gateway.engines.base import UNREADY, Engine, EngineHealth
from qwen_gateway.errors import EngineUnavailable, GatewayError


class FlakyEngine:
    def __init__(self, inner: Engine, *, broken: bool = False) -> None:
        self.inner = inner
        self.broken = broken
        self.error: GatewayError = EngineUnavailable("injected fault: replica down")
        self.attempts = 0
        self.healthy = True
        self.fail_after: int | None = None
        self.stall: asyncio.Event | None = None
        self.mangle: Callable[[EngineEvent], EngineEvent] | None = None

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        self.attempts += 1
        if self.broken:
            return self._fail()
        if self.fail_after is not None or self.stall is not None or self.mangle is not None:
            return self._faulty(self.inner.stream(request))
        return self.inner.stream(request)

    async def _fail(self) -> AsyncGenerator[EngineEvent, None]:
        raise self.error
        yield  # pragma: no cover - makes this an async generator

    async def _faulty(
        self, events: AsyncGenerator[EngineEvent, None]
    ) -> AsyncGenerator[EngineEvent, None]:
        try:
            if self.stall is not None:
                await self.stall.wait()
            sent = 0
            async for event in events:
                if self.fail_after is not None and sent >= self.fail_after:
                    raise self.error
                yield event if self.mangle is None else self.mangle(event)
                sent += 1
        finally:
            await events.aclose()

    async def health(self) -> EngineHealth:
        return await self.inner.health() if self.healthy else UNREADY

    async def aclose(self) -> None:
        await self.inner.aclose()
