"""Replica health checks: Router.check_health is one round; what a probe catches is logged
and counted by the replica's breaker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from qwen_gateway.core.types import ModelInfo
from qwen_gateway.engines.base import READY, UNREADY, EngineHealth
from qwen_gateway.routing.balancer import Balancer, Replica
from qwen_gateway.routing.breaker import BreakerState, CircuitBreaker
from qwen_gateway.routing.health import probe
from qwen_gateway.routing.registry import Deployment
from qwen_gateway.routing.router import Router


class Probed:
    """An engine whose health answer is scripted: up, down, an error, or no answer."""

    info = ModelInfo(id="chat", context_window=4096, max_output_tokens=1024)

    def __init__(self) -> None:
        self.up = True
        self.error: Exception | None = None
        self.hang: asyncio.Event | None = None
        self.asked = 0

    async def health(self) -> EngineHealth:
        self.asked += 1
        if self.hang is not None:
            await self.hang.wait()
        if self.error is not None:
            raise self.error
        return READY if self.up else UNREADY


def _replica(engine: Probed, failures: int = 2) -> Replica:
    fake: Any = engine
    return Replica("0", fake, CircuitBreaker(failures=failures, cooldown=30))


async def test_an_engine_that_says_it_is_down_is_marked_down_without_a_breaker_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Probed()
    replica = _replica(engine, failures=1)
    assert await probe("chat", replica, 5.0)
    engine.up = False
    assert not await probe("chat", replica, 5.0)
    assert replica.breaker.state is BreakerState.CLOSED
    assert not caplog.records


async def test_a_crashing_health_check_is_logged_with_its_traceback_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Probed()
    engine.error = RuntimeError("injected fault: a bug in the engine's health check")
    replica = _replica(engine, failures=2)
    with caplog.at_level(logging.WARNING, logger="qwen_gateway.routing.health"):
        assert not await probe("chat", replica, 5.0)
        assert replica.breaker.state is BreakerState.CLOSED  # one failure of two
        assert not await probe("chat", replica, 5.0)
    assert replica.breaker.state is BreakerState.OPEN
    assert len(caplog.records) == 2
    record = caplog.records[0]
    assert record.levelno == logging.ERROR and "replica 0 of chat" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is engine.error


async def test_a_health_check_without_an_answer_in_time_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = Probed()
    engine.hang = asyncio.Event()  # never set: the check runs into its time limit
    replica = _replica(engine, failures=1)
    with caplog.at_level(logging.WARNING, logger="qwen_gateway.routing.health"):
        assert not await probe("chat", replica, 0.01)
    assert replica.breaker.state is BreakerState.OPEN
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "no answer within 0.01s" in record.getMessage()


async def test_check_health_is_one_round_over_every_replica() -> None:
    engines = [Probed() for _ in range(3)]
    engines[1].up = False
    engines[2].error = ConnectionResetError("injected fault")
    replicas = [_replica(e) for e in engines]
    for i, r in enumerate(replicas):
        r.name = str(i)
    router = Router([Deployment("chat", Balancer(replicas[:2])), Deployment("solo",
                     Balancer(replicas[2:]))])  # fmt: skip
    await router.check_health()
    assert [r.healthy for r in replicas] == [True, False, False]
    assert [e.asked for e in engines] == [1, 1, 1]
    states = {(s.deployment, s.replica): s.healthy for s in router.replica_states()}
    assert states == {("chat", "0"): True, ("chat", "1"): False, ("solo", "2"): False}
    engines[1].up = True
    await router.check_health()
    assert [r.healthy for r in replicas] == [True, True, False]


async def test_the_background_loop_runs_check_health() -> None:
    rounds = asyncio.Queue[None]()

    class Counted(Router):
        async def check_health(self, probe_seconds: float = 5.0) -> None:
            await super().check_health(probe_seconds)
            rounds.put_nowait(None)

    engines = [Probed(), Probed()]
    router = Counted([Deployment("chat", Balancer([_replica(e) for e in engines]))])
    router.start_health_checks(interval=3600)
    try:
        async with asyncio.timeout(10):
            await rounds.get()  # the first round runs at once
        assert [e.asked for e in engines] == [1, 1]
    finally:
        await router.aclose()
