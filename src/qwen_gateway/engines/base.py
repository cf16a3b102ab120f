"""The engine interfaces: small on purpose, so fakes and new backends stay cheap.

An :class:`Engine` has four members and is built started (by its plug-in's async factory):
nothing on it is half-initialised. Metrics are pushed to the :class:`EngineObserver` the
engine was given at construction; nothing polls the engine for them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from qwen_gateway.core.types import (
    EmbeddingRequest,
    EmbeddingResult,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    OutputConstraint,
    SamplingParams,
    UsageMeter,
)


@dataclass(frozen=True, slots=True)
class GenerationJob:
    """One prompt-level generation: ``n`` choices for the prompt's token ids."""

    prompt: Sequence[int]
    sampling: SamplingParams
    n: int = 1
    request_id: str = ""
    #: enforced while decoding by backends that can (see ModelInfo.enforces_constraints)
    constraint: OutputConstraint | None = None
    #: updated as tokens come, so a stream cut off is still accounted
    meter: UsageMeter | None = None
    #: who asks, so that the backend can share per-tenant resources fairly
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """What the router (``ready``) and /health (``down``) need to know of an engine."""

    #: It takes requests now.
    ready: bool
    #: It has failed (its scheduler is restarting, or down for good): /health fails, so that
    #: the process gets restarted. An engine that is only unready (an upstream unreachable)
    #: is not down.
    down: bool = False


READY = EngineHealth(ready=True)
UNREADY = EngineHealth(ready=False)

#: (running, waiting): the requests an engine serves now and those queued for it.
LoadSnapshot = Callable[[], tuple[int, int]]


class EngineObserver(Protocol):
    """Where one engine reports its metrics; given to it at construction (see
    ``observability.metrics.EngineMetrics``). Methods may be called from any thread."""

    def watch_load(self, load: LoadSnapshot) -> None:
        """Gauges read when metrics are collected (registered once, at construction)."""
        ...

    def decode_step(self, batch_size: int) -> None: ...

    def aborted(self, delay_steps: int = 0) -> None:
        """A generation ended early (its client left); ``delay_steps``: decode steps it ran
        after the abort was asked for."""
        ...

    def malformed_tool_calls(self, count: int) -> None: ...

    def restarted(self) -> None:
        """The engine's scheduler crashed and was restarted."""
        ...


class QuietObserver:
    """An :class:`EngineObserver` that records nothing (engines built without metrics)."""

    def watch_load(self, load: LoadSnapshot) -> None:
        return None

    def decode_step(self, batch_size: int) -> None:
        return None

    def aborted(self, delay_steps: int = 0) -> None:
        return None

    def malformed_tool_calls(self, count: int) -> None:
        return None

    def restarted(self) -> None:
        return None


QUIET = QuietObserver()


@runtime_checkable
class Engine(Protocol):
    """Serves chat and raw-prompt generation for one model."""

    @property
    def info(self) -> ModelInfo: ...

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        """Events for ``request``; always ends with one :class:`Usage`. Closing it aborts."""
        ...

    async def health(self) -> EngineHealth: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Embedder(Protocol):
    """Serves embeddings for one model (``info.task == "embed"``). Engines that embed have
    this besides the :class:`Engine` members (their ``stream`` refuses generation)."""

    @property
    def info(self) -> ModelInfo: ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One unit vector per input, in order; a :class:`~qwen_gateway.errors.GatewayError`
        naming ``input`` or ``dimensions`` when the request cannot be served."""
        ...


class TokenBackend(Protocol):
    """A prompt-level backend: token ids in, text events out (see engines.prompt)."""

    @property
    def info(self) -> ModelInfo: ...

    def generate(self, job: GenerationJob) -> AsyncGenerator[EngineEvent, None]:
        """Generate ``job.n`` choices; enforce ``job.constraint`` while decoding when the
        backend can."""
        ...

    async def health(self) -> EngineHealth: ...

    async def aclose(self) -> None: ...
