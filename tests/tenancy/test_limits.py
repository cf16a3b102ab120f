"""Rate limits and budgets through the API (in-process and Redis limiters), and the limiter
rules on their own."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.types import EngineEvent
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.engines.scripted import ScriptedBackend
from qwen_gateway.errors import (
    EngineUnavailable,
    GatewayError,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
)
from qwen_gateway.policy.principal import Limits
from qwen_gateway.policy.ratelimit import Limiter, LocalLimiter, RedisLimiter, Subject, duration
from routing.helpers import routed, scripted
from support.fixtures import open_in_process
from support.flaky import FlakyEngine
from support.redis_outage import eventually, proxied_redis
from tenancy.helpers import ASK, REPLY, admin_key, client, new_key, secured


def limits_settings(backend: tuple[str, str | None], **extra: Any) -> dict[str, Any]:
    name, url = backend
    out: dict[str, Any] = {
        "limits": {"backend": name, "redis_prefix": f"t{secrets.token_hex(4)}", **extra}
    }
    if url:
        out["redis"] = {"url": url}
    return out


async def ask(g: Any, key: str, model: str = "scripted", **body: Any) -> Any:
    return await g.http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": ASK, **body},
        headers={"Authorization": f"Bearer {key}"},
    )


async def test_requests_per_minute(tmp_path: Path, limiter_backend: tuple[str, str | None]) -> None:
    async with secured(tmp_path, **limits_settings(limiter_backend)) as g:
        key = await new_key(g, rpm=3)
        remaining = []
        for _ in range(3):
            resp = await ask(g, key)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(resp.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        refused = await ask(g, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
        with pytest.raises(openai.RateLimitError):
            await client(g, key).chat.completions.create(model="scripted", messages=ASK)  # type: ignore[arg-type]
        other = await new_key(g, rpm=3)  # limits are per key
        assert (await ask(g, other)).status_code == 200


async def test_tokens_per_minute_and_budgets(
    tmp_path: Path, limiter_backend: tuple[str, str | None]
) -> None:
    async with secured(tmp_path, **limits_settings(limiter_backend)) as g:
        usage = (await ask(g, await new_key(g))).json()["usage"]
        reply = usage["completion_tokens"]  # max_tokens=reply: what is reserved is used
        per_request = usage["prompt_tokens"] + usage["completion_tokens"]
        # TPM: room for two requests (prompt and max_tokens reserved up front)
        key = await new_key(g, tpm=3 * per_request - 1)
        assert (await ask(g, key, max_tokens=reply)).headers["x-ratelimit-limit-tokens"]
        assert (await ask(g, key, max_tokens=reply)).status_code == 200
        refused = await ask(g, key, max_tokens=reply)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["x-ratelimit-remaining-tokens"]) < per_request
        # a request larger than the whole TPM can never pass: a clear message
        tiny = await new_key(g, tpm=per_request - 1)
        refused = await ask(g, tiny, max_tokens=reply)
        assert refused.status_code == 429
        assert "more than the tokens-per-minute limit" in refused.json()["error"]["message"]
        assert "retry-after" not in refused.headers
        # daily budget: one request fits, the next finds it used up -> insufficient_quota
        budget = await new_key(g, daily_tokens=per_request)
        assert (await ask(g, budget, max_tokens=reply)).status_code == 200
        spent = await ask(g, budget, max_tokens=reply)
        assert spent.status_code == 429
        assert spent.json()["error"]["code"] == "insufficient_quota"
        assert spent.json()["error"]["type"] == "insufficient_quota"
        assert "used up" in spent.json()["error"]["message"]
        monthly = await new_key(g, monthly_tokens=per_request + 3)
        assert (await ask(g, monthly, max_tokens=1)).status_code == 200
        assert (await ask(g, monthly, max_tokens=1)).json()["error"]["code"] == (
            "insufficient_quota"
        )


async def test_a_budget_reserves_max_tokens_for_every_choice(
    tmp_path: Path, limiter_backend: tuple[str, str | None]
) -> None:
    """A request is admitted only if its prompt and n × max_tokens fit the budget; what it
    did not use is given back when it ends."""
    async with secured(tmp_path, **limits_settings(limiter_backend)) as g:
        key = await new_key(g, daily_tokens=2000, max_concurrency=4)
        refused = await ask(g, key, max_tokens=1500, n=4)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "insufficient_quota"
        assert "more than the whole daily token budget" in error["message"]
        # no max_tokens: the deployment's output limit (8192) is reserved
        assert (await ask(g, key)).json()["error"]["code"] == "insufficient_quota"
        used = 0
        for _ in range(3):  # 4 × 6 completion tokens each, though 4 × 400 are reserved
            done = await ask(g, key, max_tokens=400, n=4)
            assert done.status_code == 200, done.text
            assert done.json()["usage"]["completion_tokens"] == 4 * 6
            used += done.json()["usage"]["total_tokens"]
        left = 2000 - used
        prompt = done.json()["usage"]["prompt_tokens"]
        # the counter holds the real usage: what is left can be reserved, not a token more
        most = (left - prompt) // 4
        short = await ask(g, key, max_tokens=most + 1, n=4)
        assert short.json()["error"]["code"] == "insufficient_quota"
        assert f"has {left} tokens left" in short.json()["error"]["message"]
        assert (await ask(g, key, max_tokens=most, n=4)).status_code == 200


async def test_each_choice_takes_a_concurrency_slot(
    tmp_path: Path, limiter_backend: tuple[str, str | None]
) -> None:
    async with secured(tmp_path, **limits_settings(limiter_backend)) as g:
        key = await new_key(g, max_concurrency=4)
        assert (await ask(g, key, n=4)).status_code == 200
        refused = await ask(g, key, n=5)
        assert refused.status_code == 429
        assert "exceed the 4 concurrent sequences" in refused.json()["error"]["message"]


async def test_per_model_global_limits(
    tmp_path: Path, limiter_backend: tuple[str, str | None]
) -> None:
    settings = limits_settings(limiter_backend, models={"other": {"rpm": 1}})
    async with secured(tmp_path, **settings) as g:
        a, b = await new_key(g), await new_key(g)
        assert (await ask(g, a, "other")).status_code == 200
        refused = await ask(g, b, "other")  # another key, the same model: the model's limit
        assert refused.status_code == 429
        assert "model:other" in refused.json()["error"]["message"]
        assert (await ask(g, b, "scripted")).status_code == 200


@pytest.mark.parametrize(
    "error", [EngineUnavailable("injected fault: down"), InvalidRequest("injected fault")]
)
async def test_a_request_that_fails_is_charged_only_what_it_used(
    tmp_path: Path, limiter_backend: tuple[str, str | None], error: GatewayError
) -> None:
    engine = FlakyEngine(scripted("m"))
    async with routed(tmp_path, [{"name": "m"}], {"m": engine}, auth={"enabled": True},
                      **limits_settings(limiter_backend)) as g:  # fmt: skip
        usage = (await ask(g, await new_key(g), "m")).json()["usage"]
        reply = usage["completion_tokens"]
        key = await new_key(g, daily_tokens=usage["total_tokens"])  # room for one request
        engine.broken, engine.error = True, error
        for _ in range(3):
            failed = await ask(g, key, "m", max_tokens=reply)
            assert failed.status_code == error.status_code
        engine.broken = False
        assert (await ask(g, key, "m", max_tokens=reply)).status_code == 200
        assert (await ask(g, key, "m", max_tokens=reply)).status_code == 429
        await g.container.store.writer.flush()
        rows = await g.container.store.usage.report(["key"])
        (mine,) = [r for r in rows if r["errors"]]  # the key with room for one request
        assert (mine["requests"], mine["errors"]) == (5, 4)  # 3 failed, 1 refused
        assert mine["prompt_tokens"] + mine["completion_tokens"] == usage["total_tokens"]


@pytest.fixture
async def limiter(limiter_backend: tuple[str, str | None]) -> Any:
    name, url = limiter_backend
    if name == "local":
        yield LocalLimiter()
        return
    import redis.asyncio

    r = redis.asyncio.from_url(url)
    yield RedisLimiter(r, prefix=f"t{secrets.token_hex(4)}")
    await r.aclose()


async def test_concurrency_is_held_until_settled(limiter: Limiter) -> None:
    who = Subject("key:1", Limits(max_concurrency=2))
    first = await limiter.acquire([who], 0)
    await limiter.acquire([who], 0)
    with pytest.raises(RateLimited):
        await limiter.acquire([who], 0)
    await limiter.settle(first, 5)
    await limiter.settle(first, 5)  # settling twice releases once
    await limiter.acquire([who], 0)
    with pytest.raises(RateLimited):
        await limiter.acquire([who], 0)


async def test_all_subjects_or_none_are_charged(limiter: Limiter) -> None:
    key = Subject("key:2", Limits(rpm=5))
    model = Subject("model:m", Limits(rpm=1))
    await limiter.acquire([key, model], 0)
    for _ in range(3):
        with pytest.raises(RateLimited):
            await limiter.acquire([key, model], 0)  # refused by the model: the key is not charged
    for _ in range(4):
        await limiter.acquire([key], 0)
    with pytest.raises(RateLimited):
        await limiter.acquire([key], 0)


async def test_budget_counts_completion_tokens(limiter: Limiter) -> None:
    who = Subject("key:3", Limits(daily_tokens=100))
    permit = await limiter.acquire([who], 40)
    await limiter.settle(permit, 60)  # 100 used
    with pytest.raises(QuotaExceeded):
        await limiter.acquire([who], 1)


async def test_admission_reserves_the_completion_and_settling_refunds_the_rest(
    limiter: Limiter,
) -> None:
    budget = Subject("key:5", Limits(daily_tokens=1000))
    permit = await limiter.acquire([budget], 40, reserve=600)
    with pytest.raises(QuotaExceeded):
        await limiter.acquire([budget], 0, reserve=400)  # 640 held + 400 > 1000
    await limiter.settle(permit, 60)  # the real use: 100
    await limiter.settle(await limiter.acquire([budget], 0, reserve=900), 0)  # 100 + 900 fits
    with pytest.raises(QuotaExceeded):
        await limiter.acquire([budget], 0, reserve=901)
    minute = Subject("key:6", Limits(tpm=1000))
    permit = await limiter.acquire([minute], 40, reserve=600)
    with pytest.raises(RateLimited):
        await limiter.acquire([minute], 0, reserve=400)
    permit.prompt_tokens = 0  # it failed before an engine took it: nothing was used
    await limiter.settle(permit, 0)
    await limiter.acquire([minute], 0, reserve=1000)


async def test_a_released_admission_leaves_no_trace(limiter: Limiter) -> None:
    who = Subject("key:7", Limits(rpm=1, tpm=100, max_concurrency=1, daily_tokens=100,
                                  monthly_tokens=100))  # fmt: skip
    for _ in range(3):
        await limiter.release(await limiter.acquire([who], 40, reserve=60))
    permit = await limiter.acquire([who], 40, reserve=60)
    await limiter.release(permit)
    await limiter.release(permit)  # twice gives back once
    await limiter.acquire([who], 40, reserve=60)


async def test_each_sequence_holds_a_concurrency_slot(limiter: Limiter) -> None:
    who = Subject("key:8", Limits(max_concurrency=4))
    four = await limiter.acquire([who], 0, sequences=4)
    with pytest.raises(RateLimited) as busy:
        await limiter.acquire([who], 0)
    assert busy.value.headers["Retry-After"] == "1"
    await limiter.settle(four, 0)
    three = await limiter.acquire([who], 0, sequences=3)
    await limiter.acquire([who], 0)
    await limiter.settle(three, 0)
    with pytest.raises(RateLimited) as never:
        await limiter.acquire([who], 0, sequences=5)
    assert "Retry-After" not in never.value.headers  # it can never fit


async def test_rate_limit_headers_show_only_the_callers_own_limits(limiter: Limiter) -> None:
    model = Subject("model:m2", Limits(rpm=10, tpm=1000), shared=True)
    assert (await limiter.acquire([model], 5)).headers == {}
    key = Subject("key:9", Limits(rpm=3))
    shown = (await limiter.acquire([key, model], 5)).headers
    assert shown["x-ratelimit-limit-requests"] == "3"
    assert shown["x-ratelimit-remaining-requests"] == "2"
    assert "x-ratelimit-limit-tokens" not in shown  # the model's TPM is not the caller's


async def test_windows_slide_with_the_clock() -> None:
    now = [1_000_000.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    who = Subject("key:4", Limits(rpm=2, tpm=100))
    await limiter.acquire([who], 50)
    now[0] += 30
    await limiter.acquire([who], 50)
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire([who], 1)
    assert refused.value.headers["Retry-After"] == "30"
    now[0] += 30.5  # the first request has left the window
    permit = await limiter.acquire([who], 50)
    assert permit.headers["x-ratelimit-remaining-requests"] == "0"
    assert permit.headers["x-ratelimit-remaining-tokens"] == "0"


def test_reset_durations_read_like_openais() -> None:
    assert [duration(s) for s in (0.25, 1, 59.2, 60, 61)] == ["250ms", "1s", "1m0s", "1m0s", "1m1s"]


class HeldBackend(ScriptedBackend):
    """Scripted replies that stop after their first token until ``release`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name, [REPLY])
        self.streaming = 0
        self.release = asyncio.Event()

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncGenerator[EngineEvent, None]:
        held = False
        async for event in super().generate(*args, **kwargs):
            yield event
            if not held:
                held = True
                self.streaming += 1
                await self.release.wait()


async def test_streams_cut_off_from_redis_release_their_slots_and_charge_tokens_when_it_is_back(
    tmp_path: Path, redis_url: str
) -> None:
    import redis.asyncio

    prefix = f"t{secrets.token_hex(4)}"
    backend = HeldBackend("scripted")
    direct = redis.asyncio.from_url(redis_url)
    with proxied_redis(redis_url) as (proxy, url):
        tree = {
            "data_dir": str(tmp_path),
            "redis": {"url": url},
            "limits": {"redis_prefix": prefix},
        }
        container = Container(
            load_settings(tree, env={}), engines={"scripted": PromptEngine(backend)}
        )
        async with open_in_process(container) as g:
            key = await new_key(g, max_concurrency=2, daily_tokens=100_000)
            body = {"model": "scripted", "messages": ASK, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            auth = {"Authorization": f"Bearer {key}"}
            streams = [
                asyncio.create_task(g.http.post("/v1/chat/completions", json=body, headers=auth))
                for _ in range(2)
            ]

            async def both_streaming() -> bool:
                return backend.streaming == 2

            await eventually(both_streaming, "both streams started")
            proxy.down()  # Redis goes away mid-stream
            backend.release.set()
            spent = 0
            for resp in await asyncio.gather(*streams):
                assert resp.status_code == 200
                chunks = [json.loads(line[6:]) for line in resp.text.splitlines()
                          if line.startswith("data: {")]  # fmt: skip
                spent += chunks[-1]["usage"]["total_tokens"]

            async def queued() -> bool:
                return container.leases.pending == 2

            await eventually(queued, "both settles queued")
            proxy.up()

            async def settled() -> bool:
                return container.leases.pending == 0

            await eventually(settled, "the queued settles went through")
            (day,) = await direct.keys(f"{prefix}:limits:*:d:*")
            assert int(await direct.get(day)) == spent  # completion tokens charged
            # the slots are free again at once, not after the lease period
            assert (await ask(g, key)).status_code == 200
    await direct.aclose()


async def test_an_unreachable_limiter_is_a_503_with_retry_after(
    tmp_path: Path, redis_url: str
) -> None:
    with proxied_redis(redis_url) as (proxy, url):
        async with secured(tmp_path, **limits_settings(("redis", url))) as g:
            key = await new_key(g, rpm=5)
            proxy.down()
            refused = await ask(g, key)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "service_unavailable"
            assert int(refused.headers["retry-after"]) >= 1
            proxy.up()
            assert (await ask(g, key)).status_code == 200


async def test_a_request_without_max_tokens_gets_the_key_default_else_the_deployment_default(
    tmp_path: Path,
) -> None:
    deployments = [{"name": "scripted", "default_max_tokens": 5}, {"name": "other"}]
    async with secured(tmp_path, deployments=deployments) as g:  # the reply is 7 tokens
        plain, limited = await new_key(g), await new_key(g, default_max_tokens=3)

        async def completion(key: str, **extra: Any) -> tuple[int, str]:
            reply = await client(g, key).chat.completions.create(
                model="scripted", messages=ASK, **extra
            )
            assert reply.usage is not None
            return reply.usage.completion_tokens, reply.choices[0].finish_reason

        assert await completion(plain) == (5, "length")  # the deployment's default
        assert await completion(limited) == (3, "length")  # the key's default wins
        assert await completion(limited, max_tokens=4) == (4, "length")  # the client's wins
        assert (await completion(plain, max_completion_tokens=100))[1] == "stop"
        card = (await g.http.get("/v1/models/scripted", headers=_bearer(plain))).json()
        assert (card["default_max_tokens"], card["max_output_tokens"]) == (5, 8192)
        other = (await g.http.get("/v1/models/other", headers=_bearer(plain))).json()
        assert other["default_max_tokens"] == 2048  # the documented default
        keys = (await g.http.get("/admin/keys", headers=_bearer(await admin_key(g)))).json()
        assert {k["default_max_tokens"] for k in keys["data"]} >= {None, 3}
        bad = await g.http.post(
            "/admin/keys",
            json={"name": "x", "default_max_tokens": 0},
            headers=_bearer(await admin_key(g)),
        )
        assert bad.status_code == 400


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_burst_beyond_the_redis_pool_waits_for_connections(
    tmp_path: Path, redis_url: str
) -> None:
    """More limited requests at once than Redis connections: they queue for a connection
    (no 503 'limits cannot be checked'), and the limit is exact."""
    redis_settings = {"url": redis_url, "max_connections": 2}
    prefix = {"redis_prefix": f"t{secrets.token_hex(4)}"}
    async with secured(tmp_path, redis=redis_settings, limits=prefix) as g:
        key = await new_key(g, rpm=10)
        body = {"model": "scripted", "messages": ASK, "max_tokens": 1}
        headers = {"Authorization": f"Bearer {key}"}
        replies = await asyncio.gather(
            *(g.http.post("/v1/chat/completions", json=body, headers=headers) for _ in range(40))
        )
        assert Counter(r.status_code for r in replies) == {200: 10, 429: 30}
