"""The engine interfaces: small on purpose, so fakes and new backends stay cheap."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from qwen_gateway.core.types import (
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    OutputConstraint,
    SamplingParams,
    UsageMeter,
)
from qwen_gateway.qwen.template import ChatTemplate
from qwen_gateway.qwen.tokenizer import QwenTokenizer


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot for metrics and tests."""

    running: int = 0
    waiting: int = 0
    decode_steps: int = 0
    last_batch_size: int = 0
    max_batch_size: int = 0
    aborted: int = 0
    #: Decode steps that ran between an abort request and the slot being freed (worst case).
    max_abort_delay_steps: int = 0
    #: Tool-call blocks in model output that could not be parsed (returned as content).
    malformed_tool_calls: int = 0
    #: Times the engine's scheduler crashed and was restarted.
    restarts: int = 0
    #: The engine's scheduler is not running (restarting, or down for good): /health fails.
    down: bool = False


@runtime_checkable
class Engine(Protocol):
    """Serves chat and raw-prompt generation for one model."""

    @property
    def info(self) -> ModelInfo: ...

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        """Events for ``request``; always ends with one :class:`Usage`. Closing it aborts."""
        ...

    async def start(self) -> None: ...

    async def ready(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    async def aclose(self) -> None: ...


class TokenBackend(Protocol):
    """A prompt-level backend: token ids in, text events out (see engines.prompt).

    ``tokenizer`` and ``template`` are the model's own, available once ``start`` returned.
    """

    tokenizer: QwenTokenizer | None
    template: ChatTemplate | None

    @property
    def info(self) -> ModelInfo: ...

    def generate(
        self,
        prompt: Sequence[int],
        sampling: SamplingParams,
        n: int,
        request_id: str,
        constraint: OutputConstraint | None = None,
        meter: UsageMeter | None = None,
        tenant: str = "",
    ) -> AsyncGenerator[EngineEvent, None]:
        """Generate ``n`` choices; enforce ``constraint`` while decoding when one is given.
        ``tenant`` (who asks) lets the backend share per-tenant resources fairly."""
        ...

    async def start(self) -> None: ...

    async def ready(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    async def aclose(self) -> None: ...
