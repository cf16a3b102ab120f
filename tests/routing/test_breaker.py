"""The circuit breaker with an injected clock, and replica ordering by the balancer."""

from __future__ import annotations

import random
from collections import Counter

from qwen_gateway.engines.scripted import scripted_engine
from qwen_gateway.routing.balancer import Balancer, Replica
from qwen_gateway.routing.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_consecutive_failures_open_the_breaker_and_a_success_resets_the_count() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=3, cooldown=10, clock=clock)
    t = b.acquire()
    assert t is not None and not t.probe
    b.failure(t)
    b.failure(t)
    b.success(t)  # a completed request: not consecutive any more
    b.failure(t)
    b.failure(t)
    b.answered(t)  # a first event alone does not reset the count
    assert b.state is BreakerState.CLOSED and b.acquire() is not None
    b.failure(t)
    assert b.state is BreakerState.OPEN
    assert not b.available() and b.acquire() is None
    assert b.retry_after() == 10


def test_after_the_cooldown_one_probe_goes_through_and_its_result_decides() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown=10, clock=clock)
    old = b.acquire()
    assert old is not None
    b.failure(old)
    clock.now += 9.9
    assert b.state is BreakerState.OPEN
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN
    probe = b.acquire()
    assert probe is not None and probe.probe
    assert b.acquire() is None  # only one at a time
    b.release(old)  # a request let in before it opened ends: the probe keeps its slot
    b.failure(old)  # ... nor does its late failure restart the cooldown
    assert b.acquire() is None and b.state is BreakerState.HALF_OPEN
    b.failure(probe)  # the probe failed: open again, for a whole new cooldown
    assert b.state is BreakerState.OPEN
    clock.now += 9
    assert b.acquire() is None
    clock.now += 1
    probe = b.acquire()
    assert probe is not None and probe.probe
    b.answered(probe)  # its first event closes the breaker
    assert b.state is BreakerState.CLOSED
    assert b.acquire() is not None and b.acquire() is not None


def test_a_probe_that_ends_without_a_verdict_frees_the_probe_slot() -> None:
    clock = Clock()
    b = CircuitBreaker(failures=1, cooldown=1, clock=clock)
    first = b.acquire()
    assert first is not None
    b.failure(first)
    clock.now += 1
    probe = b.acquire()
    assert probe is not None and probe.probe
    b.release(probe)  # e.g. the client went away
    assert b.state is BreakerState.HALF_OPEN and b.acquire() is not None


def _open(b: CircuitBreaker) -> None:
    ticket = b.acquire()
    assert ticket is not None
    b.failure(ticket)


def _replicas(n: int, clock: Clock) -> list[Replica]:
    engine = scripted_engine("m", ["x"])
    return [Replica(f"r{i}", engine, CircuitBreaker(1, 10, clock)) for i in range(n)]


def test_least_outstanding_goes_to_the_least_busy_replica_and_spreads_ties() -> None:
    replicas = _replicas(3, Clock())
    balancer = Balancer(replicas, rng=random.Random(1))
    replicas[0].outstanding, replicas[1].outstanding, replicas[2].outstanding = 4, 1, 2
    assert [r.name for r in balancer.order()] == ["r1", "r2", "r0"]
    for r in replicas:
        r.outstanding = 0
    firsts = Counter(balancer.order()[0].name for _ in range(300))
    assert set(firsts) == {"r0", "r1", "r2"} and min(firsts.values()) > 50


def test_power_of_two_choices_never_picks_the_busiest_of_its_two() -> None:
    replicas = _replicas(4, Clock())
    balancer = Balancer(replicas, "power_of_two", rng=random.Random(2))
    for i, r in enumerate(replicas):
        r.outstanding = i * 10
    firsts = Counter(balancer.order()[0].name for _ in range(400))
    assert "r3" not in firsts  # the busiest loses every pairing it is in
    assert firsts["r0"] > firsts["r1"] > firsts["r2"] > 0


def test_open_and_unhealthy_replicas_are_avoided() -> None:
    clock = Clock()
    replicas = _replicas(3, clock)
    balancer = Balancer(replicas, rng=random.Random(3))
    _open(replicas[0].breaker)
    replicas[1].healthy = False
    for _ in range(20):
        assert [r.name for r in balancer.order()] == ["r2", "r1"]
    _open(replicas[2].breaker)
    assert [r.name for r in balancer.order()] == ["r1"]  # down, but the last one left
    clock.now += 10
    assert {r.name for r in balancer.order()} == {"r0", "r1", "r2"}  # half-open again


def test_affinity_keeps_a_caller_on_one_replica_until_it_fails() -> None:
    clock = Clock()
    replicas = _replicas(4, clock)
    balancer = Balancer(replicas, rng=random.Random(4))
    homes = {user: balancer.order(user)[0] for user in (f"user-{i}" for i in range(40))}
    for user, home in homes.items():
        for _ in range(5):
            replicas[0].outstanding += 1  # load does not move a pinned caller
            assert balancer.order(user)[0] is home
    assert len({h.name for h in homes.values()}) == 4  # callers spread over the replicas
    home = homes["user-0"]
    _open(home.breaker)
    moved = balancer.order("user-0")[0]
    assert moved is not home
    clock.now += 10
    probe = home.breaker.acquire()
    assert probe is not None
    home.breaker.answered(probe)
    assert balancer.order("user-0")[0] is home
