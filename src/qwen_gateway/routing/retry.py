"""The retry loop: one request tried on the replicas of each deployment of its plan in turn.

A deployment is screened first (its context window, capabilities and output limit, its
concurrency, whether any breaker lets a request through), then the request is admitted for it
(its limits) and its replicas are tried in the balancer's order, each under a replica lease
(:mod:`qwen_gateway.routing.lease`). Until the first event, a failing replica hands the
request to the next replica, then to the next deployment of the plan, as
:mod:`qwen_gateway.routing.failure` classifies the error; after it, errors end the stream as
they are. At most ``max_attempts`` engine streams are started for one request. Each step is
noted on the request's route trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import EmbeddingRequest, EngineEvent, GenerationRequest, ModelInfo
from qwen_gateway.engines.base import Embedder, Engine
from qwen_gateway.errors import (
    ContextLengthExceeded,
    EngineOverloaded,
    EngineUnavailable,
    GatewayError,
    InvalidRequest,
    UpstreamError,
)
from qwen_gateway.routing.balancer import Replica
from qwen_gateway.routing.failure import Action, Outcome, as_gateway_error, before_first_event
from qwen_gateway.routing.lease import ReplicaLease, lease
from qwen_gateway.routing.registry import TASK_CAPABILITIES, Deployment

log = logging.getLogger(__name__)
#: What the router routes: generation, or embeddings (whose one event is the result).
Routable = GenerationRequest | EmbeddingRequest
TokenCounter = Callable[[Routable], Awaitable[int]]
#: Admits the request for a deployment before its replicas are tried (raises to refuse).
Admit = Callable[[str, ModelInfo], Awaitable[None]]
Events = AsyncGenerator[EngineEvent, None]


class AttemptObserver(Protocol):
    """Where tries are counted (the metrics)."""

    def route_attempt(self, deployment: str, replica: str, outcome: str) -> None: ...

    def route_fallback(self, deployment: str, reason: str) -> None: ...


@dataclass
class Trace:
    """The steps of one request's route, for the route header."""

    steps: list[str] = field(default_factory=list)

    def add(self, step: str) -> None:
        self.steps.append(step)

    def __str__(self) -> str:
        return "; ".join(self.steps)


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a deployment is passed over without asking its replicas."""

    reason: str
    error: GatewayError
    #: Whether ``error`` replaces an earlier try's error as the one the client gets (a real
    #: refusal does; a missing capability does not hide why earlier tries failed).
    decisive: bool = True


@dataclass
class _Tries:
    """What one request's tries have found so far."""

    attempts: int = 0
    #: Why the last deployment was left (for the trace and the fallback metric).
    reason: str = ""
    #: The error the client gets if no replica answers.
    last: GatewayError | None = None
    #: The largest context window the prompt was found not to fit.
    too_long_for: int | None = None

    def skipped(self, skip: Skip) -> None:
        self.reason = skip.reason
        if skip.decisive or self.last is None:
            self.last = skip.error


@dataclass(slots=True)
class Retry:
    """How one request goes through its plan (see the module's doc)."""

    observer: AttemptObserver
    max_attempts: int = 4
    count_tokens: TokenCounter | None = None

    async def stream(
        self,
        request: Routable,
        planned: Callable[[], Awaitable[Sequence[Deployment]]],
        *,
        trace: Trace,
        record: RequestRecord,
        affinity: str | None = None,
        admit: Admit | None = None,
    ) -> Events:
        """The events of the first replica that answers, trying the deployments ``planned``
        gives in order; the record names the deployment and route before the first event goes
        out."""
        plan = await planned()
        tries = _Tries()
        for step, dep in enumerate(plan):
            if tries.attempts >= self.max_attempts:
                break
            if step > 0:
                trace.add(f"fallback={dep.name} ({tries.reason})")
            info = dep.info
            replicas = await self._replicas(request, plan, step, info, tries, affinity)
            if not replicas:
                continue
            if admit is not None:
                await admit(dep.name, info)
            routed = replace(request, model=dep.name)
            for replica in replicas:
                if tries.attempts >= self.max_attempts:
                    break
                held = lease(dep, replica)
                if held is None:
                    continue
                tries.attempts += 1
                try:
                    async with held, _Closing(_open(replica.engine, routed)) as events:
                        first = await _first(events)
                        held.answered()
                        self._served(held, step, tries, trace, record)
                        yield first
                        async for event in events:
                            yield event
                    return
                except Exception as exc:
                    if held.first_event:  # never a failover once an event has gone out
                        self._ended(held)
                        raise
                    action = self._failed(held, exc, tries, trace)
                    if action is Action.TO_CLIENT:
                        raise
                    if action is Action.NEXT_DEPLOYMENT:
                        break
        raise tries.last or EngineUnavailable(
            f"No replica of the model '{request.model}' could take the request.",
            headers={"Retry-After": "1"},
        )

    async def _replicas(
        self,
        request: Routable,
        plan: Sequence[Deployment],
        step: int,
        info: ModelInfo,
        tries: _Tries,
        affinity: str | None,
    ) -> list[Replica]:
        """The replicas of the plan's ``step``-th deployment to try, best first; none when
        the deployment is passed over (the reason noted on ``tries``)."""
        dep = plan[step]
        skip = await self._screen(request, plan, step, info, tries)
        if skip is None:
            replicas = dep.balancer.order(affinity)
            if replicas:
                return replicas
            skip = _circuit_open(request, dep)
        tries.skipped(skip)
        return []

    async def _screen(
        self,
        request: Routable,
        plan: Sequence[Deployment],
        step: int,
        info: ModelInfo,
        tries: _Tries,
    ) -> Skip | None:
        """Why the plan's ``step``-th deployment (whose card is ``info``) cannot take the
        request, if it cannot."""
        dep, window = plan[step], info.context_window
        if await self._too_long(request, plan[step + 1 :], window, tries):
            tries.too_long_for = max(tries.too_long_for or 0, window)
            return Skip(
                f"{dep.name}: context window",
                ContextLengthExceeded(
                    f"The model '{dep.name}' has a context window of {window} tokens, which "
                    "the request does not fit; nor does any fallback's.",
                    param="messages",
                ),
            )
        return _unfit(request, dep, info) or _at_capacity(request, dep)

    async def _too_long(
        self, request: Routable, later: Sequence[Deployment], window: int, tries: _Tries
    ) -> bool:
        """Whether the prompt cannot fit ``window``: no larger than one it was found not to
        fit, or too small for its counted tokens while a ``later`` deployment's window is
        larger (then that one is tried, whatever error this engine would give)."""
        if tries.too_long_for is not None and window <= tries.too_long_for:
            return True
        if self.count_tokens is None or not any(d.info.context_window > window for d in later):
            return False
        if isinstance(request, EmbeddingRequest):  # each input is checked by the engine
            return False
        tokens = await self.count_tokens(request)
        return tokens + (request.sampling.max_tokens or 1) > window

    def _served(
        self,
        held: ReplicaLease,
        step: int,
        tries: _Tries,
        trace: Trace,
        record: RequestRecord,
    ) -> None:
        dep, replica = held.deployment, held.replica
        self.observer.route_attempt(dep.name, replica.name, "ok")
        if step > 0:
            self.observer.route_fallback(dep.name, tries.reason.partition(": ")[2])
        trace.add(f"deployment={dep.name}")
        if len(dep.replicas) > 1:
            trace.add(f"replica={replica.name}")
        record.deployment = dep.name
        record.route = str(trace)

    def _failed(self, held: ReplicaLease, exc: Exception, tries: _Tries, trace: Trace) -> Action:
        """Note a try that failed before its first event; where the request goes next."""
        action = before_first_event(exc).action
        dep, replica = held.deployment, held.replica
        if action is Action.NEXT_DEPLOYMENT:  # the prompt does not fit this window
            tries.too_long_for = max(tries.too_long_for or 0, dep.info.context_window)
            tries.reason = f"{dep.name}: context window"
            tries.last = as_gateway_error(exc)
        elif action is Action.NEXT_REPLICA:
            if not isinstance(exc, GatewayError):
                log.warning("replica %s of %s failed", replica.name, dep.name, exc_info=exc)
            failed = as_gateway_error(exc)
            self.observer.route_attempt(dep.name, replica.name, "error")
            code = failed.code or type(failed).__name__
            tries.reason = f"{dep.name}: {code}"
            trace.add(f"retry={dep.name}@{replica.name} ({code})")
            tries.last = failed
        return action

    def _ended(self, held: ReplicaLease) -> None:
        """A stream that failed after its first event: counted when the replica is at fault."""
        if held.outcome is Outcome.FAILURE:
            self.observer.route_attempt(held.deployment.name, held.replica.name, "stream_error")


def _unfit(request: Routable, dep: Deployment, info: ModelInfo) -> Skip | None:
    """A capability the request needs that the deployment lacks, or an output limit below
    the ``max_tokens`` asked for."""
    missing = dep.missing_capability(request)
    if missing is not None:
        param = "model" if missing in TASK_CAPABILITIES else missing
        return Skip(
            f"{dep.name}: no {missing}",
            InvalidRequest(f"The model '{request.model}' does not support {missing}.", param=param),
            decisive=False,
        )
    if isinstance(request, EmbeddingRequest):
        return None
    wanted = request.sampling.max_tokens
    if wanted is not None and info.max_output_tokens < wanted < info.context_window:
        return Skip(
            f"{dep.name}: max_tokens",
            InvalidRequest(
                f"max_tokens is too large: {wanted}. The model '{dep.name}' generates at "
                f"most {info.max_output_tokens} tokens.",
                param="max_tokens",
                code="invalid_value",
            ),
            decisive=False,
        )
    return None


def _at_capacity(request: Routable, dep: Deployment) -> Skip | None:
    if dep.max_concurrency is None or dep.outstanding < dep.max_concurrency:
        return None
    return Skip(
        f"{dep.name}: at capacity",
        EngineOverloaded(
            f"The model '{request.model}' is at capacity; retry shortly.",
            headers={"Retry-After": "1"},
        ),
    )


def _circuit_open(request: Routable, dep: Deployment) -> Skip:
    wait = min(r.breaker.retry_after() for r in dep.replicas)
    return Skip(
        f"{dep.name}: circuit open",
        EngineUnavailable(
            f"The model '{request.model}' is unavailable; retry shortly.",
            headers={"Retry-After": str(max(1, round(wait)))},
        ),
    )


def _open(engine: Engine, request: Routable) -> Events:
    """The engine's events for ``request``: its stream, or its embeddings as one event."""
    if isinstance(request, EmbeddingRequest):
        return _embedded(engine, request)
    return engine.stream(request)


async def _embedded(engine: Engine, request: EmbeddingRequest) -> Events:
    if not isinstance(engine, Embedder):
        raise InvalidRequest(
            f"The model '{request.model}' does not support embeddings.", param="model"
        )
    yield await engine.embed(request)


async def _first(events: Events) -> EngineEvent:
    try:
        return await anext(events)
    except StopAsyncIteration:
        raise UpstreamError("The engine's stream ended without any event.") from None


class _Closing:
    """Like ``contextlib.aclosing``, but a failure to close is logged, not raised."""

    __slots__ = ("_events",)

    def __init__(self, events: Events) -> None:
        self._events = events

    async def __aenter__(self) -> Events:
        return self._events

    async def __aexit__(self, *exc_info: object) -> None:
        await close(self._events)


async def close(events: Events) -> None:
    """Close an engine stream; a failure to clean up is logged, not raised over the answer."""
    try:
        await events.aclose()
    except Exception:
        log.exception("closing an engine stream failed")
