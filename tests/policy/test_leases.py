"""The lease keeper: heartbeat-renewed concurrency leases, settles queued through a limiter
outage, and an outage refused with 503."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from qwen_gateway.errors import RateLimited, ServiceUnavailable
from qwen_gateway.policy.leases import LeaseKeeper
from qwen_gateway.policy.principal import Limits
from qwen_gateway.policy.ratelimit import LocalLimiter, Permit, RedisLimiter, Subject
from support.redis_outage import eventually, proxied_redis

ONE = Subject("key:1", Limits(max_concurrency=1, daily_tokens=1000))


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def deferred_settle(self, outcome: str) -> None:
        self.seen.append(outcome)


@pytest.fixture
async def direct(redis_url: str) -> AsyncIterator[Any]:
    r = redis.asyncio.from_url(redis_url)
    yield r
    await r.aclose()


async def test_running_requests_keep_their_leases_and_orphaned_ones_expire() -> None:
    now = [1_000_000.0]
    local = LocalLimiter(lease_seconds=30, clock=lambda: now[0])
    keeper = LeaseKeeper(local, 30)
    who = Subject("key:1", Limits(max_concurrency=2))
    await keeper.acquire([who], 0)  # a running request of this replica
    await local.acquire([who], 0)  # one of a replica that crashed: nobody renews it
    now[0] += 20
    await keeper.renew_live()
    now[0] += 20  # the orphan's lease ran out, the running request's was renewed
    await keeper.acquire([who], 0)
    with pytest.raises(RateLimited):
        await keeper.acquire([who], 0)


class CountingLimiter(LocalLimiter):
    def __init__(self) -> None:
        super().__init__()
        self.renewals: list[int] = []  # permits per renew call

    async def renew(self, permits: Sequence[Permit]) -> None:
        self.renewals.append(len(permits))
        await super().renew(permits)


async def test_one_heartbeat_renews_all_running_permits_in_one_call() -> None:
    inner = CountingLimiter()
    keeper = LeaseKeeper(inner, lease_seconds=0.03)  # a heartbeat every 10 ms
    who = Subject("key:1", Limits(max_concurrency=5))
    permits = [await keeper.acquire([who], 0) for _ in range(3)]
    await keeper.acquire([Subject("key:2", Limits(rpm=5))], 0)  # holds no lease

    async def renewed() -> bool:
        return bool(inner.renewals)

    await eventually(renewed, "a heartbeat")
    assert inner.renewals[0] == 3
    for permit in permits:
        await keeper.settle(permit, 0)
    await keeper.aclose()


async def test_redis_renewal_extends_running_leases_and_not_settled_ones(
    redis_url: str, direct: Any
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    limiter = RedisLimiter(direct, lease_seconds=30, prefix=prefix)
    who = Subject("key:1", Limits(max_concurrency=3))
    running, done = await limiter.acquire([who], 0), await limiter.acquire([who], 0)
    await limiter.settle(done, 0)
    conc = f"{prefix}:limits:{{key:1}}:conc"
    member = f"{running.lease}:1"  # one member per sequence
    before = float(await direct.zscore(conc, member))
    await RedisLimiter(direct, lease_seconds=3000, prefix=prefix).renew([running, done])
    assert float(await direct.zscore(conc, member)) > before + 2000
    assert await direct.zscore(conc, f"{done.lease}:1") is None  # released: not brought back


async def test_a_settle_during_an_outage_is_retried_when_redis_is_back(
    redis_url: str, direct: Any
) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    outcomes = Outcomes()
    with proxied_redis(redis_url) as (proxy, url):
        r = redis.asyncio.from_url(url)
        keeper = LeaseKeeper(
            RedisLimiter(r, 30, prefix), 30, backoff=(0.05, 0.2), observer=outcomes
        )
        permit = await keeper.acquire([ONE], 10)
        proxy.down()
        await keeper.settle(permit, 50)  # no error: queued
        assert keeper.pending == 1
        with pytest.raises(ServiceUnavailable) as refused:
            await keeper.acquire([ONE], 10)
        assert refused.value.status_code == 503
        assert int(refused.value.headers["Retry-After"]) >= 1
        proxy.up()

        async def settled() -> bool:
            return keeper.pending == 0

        await eventually(settled, "the queued settle went through")
        day = (await direct.keys(f"{prefix}:limits:{{key:1}}:d:*"))[0]
        assert int(await direct.get(day)) == 60  # the completion tokens were charged
        await keeper.acquire([ONE], 0)  # and the lease was released
        assert outcomes.seen == ["queued", "retried"]
        await keeper.aclose()
        await r.aclose()


class Unreachable:
    """A limiter whose settles always fail as an unreachable Redis does."""

    async def acquire(
        self, subjects: Sequence[Subject], prompt_tokens: int, reserve: int = 0, sequences: int = 1
    ) -> Permit:
        return Permit(tuple(subjects), prompt_tokens, prompt_tokens + reserve, sequences)

    async def settle(self, permit: Permit, completion_tokens: int) -> None:
        permit.settled = True
        raise redis.exceptions.ConnectionError("refused")

    async def release(self, permit: Permit) -> None:
        permit.settled = True
        raise redis.exceptions.ConnectionError("refused")

    async def renew(self, permits: Sequence[Permit]) -> None:
        raise redis.exceptions.ConnectionError("refused")

    async def aclose(self) -> None:
        return None


async def test_the_settle_queue_is_bounded_and_counts_what_it_drops() -> None:
    outcomes = Outcomes()
    keeper = LeaseKeeper(Unreachable(), 30, queue_size=2, backoff=(60, 60), observer=outcomes)
    for _ in range(3):
        await keeper.settle(await keeper.acquire([ONE], 1), 1)
    assert keeper.pending == 2
    assert outcomes.seen == ["queued", "queued", "dropped", "queued"]
    await keeper.acquire([ONE], 1)
    await keeper.renew_live()  # a failed renewal is logged, not raised
    await keeper.aclose()


async def test_a_settle_retried_after_a_lost_reply_counts_once(redis_url: str, direct: Any) -> None:
    prefix = f"t{secrets.token_hex(4)}"
    limiter = RedisLimiter(direct, lease_seconds=30, prefix=prefix)
    who = Subject("key:1", Limits(daily_tokens=10_000))
    permit = await limiter.acquire([who], 100, reserve=1_000)
    await limiter.settle(permit, 50)
    permit.settled = False  # as a retry does when it never saw the first reply
    await limiter.settle(permit, 50)
    day = [k for k in await direct.keys(f"{prefix}:*:d:*")]
    assert [int(await direct.get(k)) for k in day] == [150]  # charged once, refunded once
