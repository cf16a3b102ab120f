"""Rate limits and budgets through the API (in-process and Redis limiters), and the limiter
rules on their own."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_gateway.errors import QuotaExceeded, RateLimited
from qwen_gateway.policy.principal import Limits
from qwen_gateway.policy.ratelimit import Limiter, LocalLimiter, RedisLimiter, Subject, duration
from tenancy.helpers import ASK, admin_key, client, new_key, secured


def limits_settings(backend: tuple[str, str | None], **extra: Any) -> dict[str, Any]:
    name, url = backend
    out: dict[str, Any] = {
        "limits": {"backend": name, "redis_prefix": f"t{secrets.token_hex(4)}", **extra}
    }
    if url:
        out["redis"] = {"url": url}
    return out


async def ask(g: Any, key: str, model: str = "scripted") -> Any:
    return await g.http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": ASK},
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
        first = await ask(g, await new_key(g))
        usage = first.json()["usage"]
        per_request = usage["prompt_tokens"] + usage["completion_tokens"]
        # TPM: room for two requests (prompt charged up front, completion when they end)
        key = await new_key(g, tpm=2 * per_request + usage["prompt_tokens"] - 1)
        assert (await ask(g, key)).headers["x-ratelimit-limit-tokens"]
        assert (await ask(g, key)).status_code == 200
        refused = await ask(g, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["x-ratelimit-remaining-tokens"]) < usage["prompt_tokens"]
        # a prompt larger than the whole TPM can never pass: a clear message
        tiny = await new_key(g, tpm=usage["prompt_tokens"] - 1)
        refused = await ask(g, tiny)
        assert refused.status_code == 429 and "exceeds" in refused.json()["error"]["message"]
        # daily budget: one request fits, the next finds it used up -> insufficient_quota
        budget = await new_key(g, daily_tokens=per_request)
        assert (await ask(g, budget)).status_code == 200
        spent = await ask(g, budget)
        assert spent.status_code == 429
        assert spent.json()["error"]["code"] == "insufficient_quota"
        assert spent.json()["error"]["type"] == "insufficient_quota"
        monthly = await new_key(g, monthly_tokens=1)
        assert (await ask(g, monthly)).status_code == 200
        assert (await ask(g, monthly)).json()["error"]["code"] == "insufficient_quota"


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
