"""FlakyEngine: a deliberately failing wrapper around a real engine, for fault injection.

While ``broken`` is set, every request fails before its first event with ``error`` (an
unavailable replica by default), the way an unreachable upstream fails; otherwise requests go
to the wrapped engine. ``attempts`` counts the requests it was handed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from qwen_gateway.core.types import EngineEvent, GenerationRequest, ModelInfo
from qwen_gateway.engines.base import Engine, EngineStats
from qwen_gateway.errors import EngineUnavailable, GatewayError


class FlakyEngine:
    def __init__(self, inner: Engine, *, broken: bool = False) -> None:
        self.inner = inner
        self.broken = broken
        self.error: GatewayError = EngineUnavailable("injected fault: replica down")
        self.attempts = 0
        self.healthy = True

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        self.attempts += 1
        if self.broken:
            return self._fail()
        return self.inner.stream(request)

    async def _fail(self) -> AsyncGenerator[EngineEvent, None]:
        raise self.error
        yield  # pragma: no cover - makes this an async generator

    async def start(self) -> None:
        await self.inner.start()

    async def ready(self) -> bool:
        return self.healthy and await self.inner.ready()

    def stats(self) -> EngineStats:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()
