"""The replica lease: outstanding counts and the breaker's verdict, owned in one place."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qwen_gateway.errors import EngineOverloaded, InvalidRequest, UpstreamError
from qwen_gateway.routing.balancer import Balancer, Replica
from qwen_gateway.routing.breaker import BreakerState, CircuitBreaker
from qwen_gateway.routing.failure import Outcome
from qwen_gateway.routing.lease import lease
from qwen_gateway.routing.registry import Deployment


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _deployment(failures: int = 1, clock: Clock | None = None) -> tuple[Deployment, Replica]:
    engine: Any = object()  # a lease never touches the engine
    breaker = CircuitBreaker(failures=failures, cooldown=10, clock=clock or Clock())
    replica = Replica("0", engine, breaker)
    return Deployment("chat", Balancer([replica])), replica


async def test_a_held_lease_counts_in_the_replica_and_the_deployment() -> None:
    dep, replica = _deployment()
    held = lease(dep, replica)
    assert held is not None
    async with held:
        assert (replica.outstanding, dep.outstanding) == (1, 1)
        held.answered()
    assert (replica.outstanding, dep.outstanding) == (0, 0)
    assert held.outcome is Outcome.SUCCESS


@pytest.mark.parametrize(
    ("error", "answered", "outcome"),
    [
        (UpstreamError("down"), False, Outcome.FAILURE),
        (RuntimeError("an engine bug"), False, Outcome.FAILURE),
        (EngineOverloaded("busy"), False, Outcome.NEUTRAL),
        (InvalidRequest("the client's mistake"), False, Outcome.NEUTRAL),
        (asyncio.CancelledError(), False, Outcome.NEUTRAL),
        (UpstreamError("died mid-stream"), True, Outcome.FAILURE),
        (InvalidRequest("the client's mistake"), True, Outcome.NEUTRAL),
        (GeneratorExit(), True, Outcome.NEUTRAL),  # the client closed the stream
    ],
)
async def test_the_error_that_ends_a_lease_decides_the_breaker_outcome(
    error: BaseException, answered: bool, outcome: Outcome
) -> None:
    dep, replica = _deployment()
    held = lease(dep, replica)
    assert held is not None
    with pytest.raises(type(error)):
        async with held:
            if answered:
                held.answered()
            raise error
    assert held.outcome is outcome
    assert (replica.outstanding, dep.outstanding) == (0, 0)
    opened = outcome is Outcome.FAILURE  # one failure opens this breaker
    assert replica.breaker.state is (BreakerState.OPEN if opened else BreakerState.CLOSED)


async def test_an_open_breaker_gives_no_lease_and_a_half_open_one_a_single_probe() -> None:
    clock = Clock()
    dep, replica = _deployment(clock=clock)
    held = lease(dep, replica)
    assert held is not None
    with pytest.raises(UpstreamError):
        async with held:
            raise UpstreamError("down")
    assert lease(dep, replica) is None  # open
    clock.now += 10
    probe = lease(dep, replica)
    assert probe is not None and lease(dep, replica) is None  # one probe at a time
    async with probe:
        pass  # ended without an event or an error: no verdict, the probe's slot is free
    assert probe.outcome is Outcome.NEUTRAL
    assert replica.breaker.state is BreakerState.HALF_OPEN
    probe = lease(dep, replica)
    assert probe is not None
    async with probe:
        probe.answered()  # the first event closes the breaker at once
        assert replica.breaker.state is BreakerState.CLOSED
        assert lease(dep, replica) is not None


async def test_a_probe_answered_then_failing_mid_stream_counts_as_an_ordinary_failure() -> None:
    clock = Clock()
    dep, replica = _deployment(failures=2, clock=clock)
    for _ in range(2):
        held = lease(dep, replica)
        assert held is not None
        with pytest.raises(UpstreamError):
            async with held:
                raise UpstreamError("down")
    clock.now += 10
    probe = lease(dep, replica)
    assert probe is not None
    with pytest.raises(UpstreamError):
        async with probe:
            probe.answered()
            raise UpstreamError("died mid-stream")
    # the probe was settled by its first event: one failure now, below the threshold of two
    assert replica.breaker.state is BreakerState.CLOSED


async def test_a_lease_is_held_once() -> None:
    dep, replica = _deployment()
    held = lease(dep, replica)
    assert held is not None
    async with held:
        pass
    with pytest.raises(RuntimeError):
        async with held:
            pass
    assert (replica.outstanding, dep.outstanding) == (0, 0)
