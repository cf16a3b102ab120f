"""The retry loop on its own: replicas then deployments until the first event, never after;
every try's lease let go; the trace and the observer told each step."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    TextDelta,
)
from qwen_gateway.errors import EngineUnavailable, InvalidRequest, UpstreamError
from qwen_gateway.routing.balancer import Balancer, Replica
from qwen_gateway.routing.breaker import BreakerState, CircuitBreaker
from qwen_gateway.routing.registry import Deployment
from qwen_gateway.routing.retry import Retry, Trace

REQUEST = ChatRequest("a", (ChatMessage("user", "Hi"),))


class Fake:
    """An engine that answers 'a', 'b', or fails as it is told."""

    def __init__(self, window: int = 4096) -> None:
        self.info = ModelInfo(id="fake", context_window=window, max_output_tokens=1024)
        self.attempts = 0
        self.crash: Exception | None = None  # raised by stream() itself
        self.error: BaseException | None = None  # raised by the stream after ``fail_after``
        self.fail_after = 0
        self.events: Sequence[str] = ("a", "b")
        self.close_error: Exception | None = None
        self.served: list[str] = []

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        self.attempts += 1
        if self.crash is not None:
            raise self.crash
        self.served.append(request.model)
        return self._events()

    async def _events(self) -> AsyncGenerator[EngineEvent, None]:
        try:
            for i, text in enumerate(self.events):
                if self.error is not None and i == self.fail_after:
                    raise self.error
                yield TextDelta(0, text)
            if self.error is not None and self.fail_after >= len(self.events):
                raise self.error
        finally:
            if self.close_error is not None:
                raise self.close_error


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def route_attempt(self, deployment: str, replica: str, outcome: str) -> None:
        self.seen.append(("attempt", deployment, replica, outcome))

    def route_fallback(self, deployment: str, reason: str) -> None:
        self.seen.append(("fallback", deployment, reason))


def deployment(name: str, *engines: Fake, failures: int = 5) -> Deployment:
    replicas = [
        Replica(str(i), _engine(e), CircuitBreaker(failures=failures))
        for i, e in enumerate(engines)
    ]
    return Deployment(name, Balancer(replicas, rng=random.Random(0)))


def _engine(fake: Fake) -> Any:
    return fake


async def run(
    plan: list[Deployment], retry: Retry | None = None
) -> tuple[list[str], RequestRecord, Trace]:
    retry = retry or Retry(Observer())
    record, trace = RequestRecord("r"), Trace()

    async def planned() -> list[Deployment]:
        return plan

    texts = []
    async for event in retry.stream(REQUEST, planned, trace=trace, record=record):
        assert isinstance(event, TextDelta)
        texts.append(event.text)
    return texts, record, trace


def outstanding(plan: list[Deployment]) -> list[int]:
    return [d.outstanding for d in plan] + [r.outstanding for d in plan for r in d.replicas]


async def test_a_stream_without_any_event_is_a_failed_try() -> None:
    empty, good = Fake(), Fake()
    empty.events = ()
    plan = [deployment("a", empty), deployment("b", good)]
    observer = Observer()
    texts, record, trace = await run(plan, Retry(observer))
    assert texts == ["a", "b"] and record.deployment == "b"
    assert str(trace) == "retry=a@0 (upstream_error); fallback=b (a: upstream_error); deployment=b"
    assert observer.seen == [("attempt", "a", "0", "error"), ("attempt", "b", "0", "ok"),
                             ("fallback", "b", "upstream_error")]  # fmt: skip
    assert good.served == ["b"]  # the request is renamed for the deployment that serves it
    assert outstanding(plan) == [0, 0, 0, 0]


async def test_an_engine_bug_is_logged_and_the_next_replica_tried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashing, failing, good = Fake(), Fake(), Fake()
    crashing.crash = KeyError("injected fault")
    failing.error = RuntimeError("injected fault: inside the stream")
    plan = [deployment("a", crashing), deployment("b", failing), deployment("c", good)]
    with caplog.at_level(logging.WARNING, logger="qwen_gateway.routing.retry"):
        texts, record, trace = await run(plan)
    assert texts == ["a", "b"]
    assert {r.exc_info[1] for r in caplog.records if r.exc_info} == {
        crashing.crash,
        failing.error,
    }
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert (crashing.attempts, failing.attempts, good.attempts) == (1, 1, 1)
    assert str(trace).startswith("retry=a@0 (InternalError); fallback=b (a: InternalError)")
    assert record.deployment == "c"
    assert outstanding(plan) == [0, 0, 0, 0, 0, 0]


async def test_every_try_failing_gives_the_last_error() -> None:
    first, second = Fake(), Fake()
    first.error = EngineUnavailable("injected fault: down")
    second.error = UpstreamError("injected fault: 502")
    plan = [deployment("a", first), deployment("b", second)]
    with pytest.raises(UpstreamError):
        await run(plan)
    assert outstanding(plan) == [0, 0, 0, 0]
    with pytest.raises(EngineUnavailable) as info:
        await run([])
    assert info.value.headers == {"Retry-After": "1"}


async def test_a_client_error_goes_to_the_client_without_another_try() -> None:
    bad, spare = Fake(), Fake()
    bad.error = InvalidRequest("injected fault: bad temperature", param="temperature")
    plan = [deployment("a", bad, failures=1), deployment("b", spare)]
    with pytest.raises(InvalidRequest):
        await run(plan)
    assert (bad.attempts, spare.attempts) == (1, 0)
    assert plan[0].replicas[0].breaker.state is BreakerState.CLOSED
    assert outstanding(plan) == [0, 0, 0, 0]


async def test_after_the_first_event_an_error_ends_the_stream_and_counts() -> None:
    dying, spare = Fake(), Fake()
    dying.error, dying.fail_after = UpstreamError("injected fault: died mid-stream"), 1
    plan = [deployment("a", dying, failures=1), deployment("b", spare)]
    observer = Observer()
    with pytest.raises(UpstreamError):
        await run(plan, Retry(observer))
    assert (dying.attempts, spare.attempts) == (1, 0)
    assert observer.seen == [("attempt", "a", "0", "ok"), ("attempt", "a", "0", "stream_error")]
    assert plan[0].replicas[0].breaker.state is BreakerState.OPEN
    assert outstanding(plan) == [0, 0, 0, 0]


async def test_max_attempts_bounds_the_tries_over_replicas_and_deployments() -> None:
    engines = [Fake() for _ in range(4)]
    for e in engines:
        e.error = EngineUnavailable("injected fault: down")
    plan = [deployment("a", *engines[:2]), deployment("b", *engines[2:])]
    with pytest.raises(EngineUnavailable):
        await run(plan, Retry(Observer(), max_attempts=3))
    assert sum(e.attempts for e in engines) == 3


async def test_a_stream_closed_early_lets_go_of_its_replica_and_logs_a_failed_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Fake()
    engine.close_error = OSError("injected fault: the connection would not close")
    plan = [deployment("a", engine, failures=1)]
    record = RequestRecord("r")

    async def planned() -> list[Deployment]:
        return plan

    events = Retry(Observer()).stream(REQUEST, planned, trace=Trace(), record=record)
    assert await anext(events) == TextDelta(0, "a")
    assert outstanding(plan) == [1, 1]
    with caplog.at_level(logging.ERROR, logger="qwen_gateway.routing.retry"):
        await events.aclose()  # the client went away
    assert outstanding(plan) == [0, 0]
    (logged,) = caplog.records
    assert logged.getMessage() == "closing an engine stream failed"
    assert logged.exc_info is not None and logged.exc_info[1] is engine.close_error
    # the client leaving is not the replica's fault
    assert plan[0].replicas[0].breaker.state is BreakerState.CLOSED


async def test_a_request_cancelled_before_its_first_event_frees_the_probe() -> None:
    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    engine = Fake()
    started, gate = asyncio.Event(), asyncio.Event()

    async def stalled() -> AsyncGenerator[EngineEvent, None]:
        started.set()
        await gate.wait()
        yield TextDelta(0, "late")

    engine._events = stalled  # type: ignore[method-assign]
    breaker = CircuitBreaker(failures=1, cooldown=10, clock=clock)
    replica = Replica("0", _engine(engine), breaker)
    plan = [Deployment("a", Balancer([replica]))]
    breaker.failure(breaker.acquire() or pytest.fail("closed breaker refused"))
    clock.now += 10  # half-open: the next request is the probe
    pending = asyncio.ensure_future(run(plan))
    await started.wait()
    assert replica.outstanding == 1 and not breaker.available()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert outstanding(plan) == [0, 0]
    assert breaker.state is BreakerState.HALF_OPEN and breaker.available()
