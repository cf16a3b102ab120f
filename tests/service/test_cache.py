"""The response cache stage through the API (in-process, scripted engines that answer
"first answer", then "second answer", ...: a hit is told from a miss by its text).

Hit, miss and bypass per rule; tenant isolation and the shared scope; Cache-Control; excluded
keys; tool-call and filtered answers; limits on hits; billing; usage rows; the LRU bound
through the API; Redis unreachable; the stage absent without ``cache:``."""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from sqlalchemy import select

from qwen_gateway.config import ConfigError, load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChoiceFinished, EngineEvent, GenerationRequest
from qwen_gateway.engines.scripted import scripted_engine
from qwen_gateway.service.cache import ResponseCache
from qwen_gateway.service.pipeline import Generate, Slot
from qwen_gateway.service.route import Route
from qwen_gateway.store.db import Database
from qwen_gateway.store.tables import UsageRow
from routing.helpers import routed, scripted
from support.fixtures import InProcess, open_in_process
from support.flaky import FlakyEngine
from support.metrics import sample
from support.redis_outage import proxied_redis
from support.server import free_port, running_command
from tenancy.helpers import admin_key, new_key

REPLIES = ["first answer", "second answer", "third answer", "fourth answer"]
ASK = [{"role": "user", "content": "What is the answer?"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


class Filtering:
    """An output policy that ends every answer with ``content_filter``."""

    slot: Slot = "output_policy"

    def wrap(self, inner: Generate) -> Generate:
        async def run(
            request: GenerationRequest, record: RequestRecord, user: str | None
        ) -> AsyncGenerator[EngineEvent, None]:
            async for event in inner(request, record, user):
                if isinstance(event, ChoiceFinished):
                    event = ChoiceFinished(event.index, "content_filter")
                yield event

        return run


@asynccontextmanager
async def cached(
    tmp_path: Path,
    cache: dict[str, Any] | None = None,
    *,
    replies: Sequence[str] = REPLIES,
    auth: bool = False,
    stages: Sequence[Any] = (),
    **sections: Any,
) -> AsyncIterator[InProcess]:
    tree: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "auth": {"enabled": auth},
        "cache": cache or {},
        "deployments": [{"name": "m", "aliases": ["m-alias"]}],
        **sections,
    }
    engines = {"m": scripted_engine("m", list(replies))}
    container = Container(load_settings(tree, env={}), engines=engines, stages=stages)  # type: ignore[arg-type]
    async with open_in_process(container) as g:
        yield g


async def ask(
    g: InProcess, key: str | None = None, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    payload = {"model": "m", "messages": ASK, "temperature": 0, **body}
    return await g.http.post(
        "/v1/chat/completions", json=payload, headers={**auth, **(headers or {})}
    )


def text(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    content: str = resp.json()["choices"][0]["message"]["content"]
    return content


async def verdicts(g: InProcess) -> dict[str, float]:
    page = (await g.http.get("/metrics")).text
    return {
        r: sample(page, "qwen_gateway_cache_requests_total", result=r)
        for r in ("hit", "miss", "bypass")
    }


async def test_a_repeated_deterministic_request_is_answered_from_the_cache(tmp_path: Path) -> None:
    async with cached(tmp_path) as g:
        first = await ask(g)
        assert (text(first), first.headers["x-qwen-gateway-cache"]) == ("first answer", "miss")
        again = await ask(g)
        assert (text(again), again.headers["x-qwen-gateway-cache"]) == ("first answer", "hit")
        assert again.json()["usage"] == first.json()["usage"]
        assert again.json()["model"] == "m"
        assert "cache=hit" in again.headers["x-qwen-gateway-route"]
        alias = await ask(g, model="m-alias")  # an alias is its deployment
        assert alias.headers["x-qwen-gateway-cache"] == "hit"
        other = await ask(g, max_tokens=50)  # another request: the engine answers
        assert (text(other), other.headers["x-qwen-gateway-cache"]) == ("second answer", "miss")
        assert await verdicts(g) == {"hit": 2, "miss": 2, "bypass": 0}


async def test_the_legacy_completions_edge_is_cached_too(tmp_path: Path) -> None:
    async with cached(tmp_path) as g:
        body = {"model": "m", "prompt": "Say it", "temperature": 0}
        first = await g.http.post("/v1/completions", json=body)
        again = await g.http.post("/v1/completions", json=body)
        assert [r.headers["x-qwen-gateway-cache"] for r in (first, again)] == ["miss", "hit"]
        assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]


async def test_a_streamed_hit_replays_the_original_stream(tmp_path: Path) -> None:
    async with cached(tmp_path) as g:
        replies = []
        for _ in range(2):
            raw = await g.client.chat.completions.with_raw_response.create(
                model="m", messages=ASK, temperature=0, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = [c async for c in raw.parse()]
            replies.append((raw.headers["x-qwen-gateway-cache"], chunks))
        (v1, original), (v2, replay) = replies
        assert (v1, v2) == ("miss", "hit")

        def shape(chunks: list[Any]) -> list[Any]:
            return [
                ([(c.delta.role, c.delta.content, c.finish_reason) for c in k.choices],
                 k.usage.model_dump() if k.usage else None)
                for k in chunks
            ]  # fmt: skip

        assert shape(replay) == shape(original)
        assert shape(replay)[0][0] == [("assistant", "", None)]
        assert "".join(c.choices[0].delta.content or "" for c in replay if c.choices) == (
            "first answer"
        )
        plain = await ask(g)  # a streamed answer serves a non-streamed request as well
        assert (text(plain), plain.headers["x-qwen-gateway-cache"]) == ("first answer", "hit")


async def test_sampled_requests_bypass_unless_seeded_or_opted_in(tmp_path: Path) -> None:
    async with cached(tmp_path) as g:
        sampled = [await ask(g, temperature=0.7) for _ in range(2)]
        assert [r.headers["x-qwen-gateway-cache"] for r in sampled] == ["bypass", "bypass"]
        assert [text(r) for r in sampled] == ["first answer", "second answer"]
        seeded = [await ask(g, temperature=0.7, seed=5) for _ in range(2)]
        assert [r.headers["x-qwen-gateway-cache"] for r in seeded] == ["miss", "hit"]
        assert await verdicts(g) == {"hit": 1, "miss": 1, "bypass": 2}
    async with cached(tmp_path / "opted", {"cache_nondeterministic": True}) as g:
        sampled = [await ask(g, temperature=0.7) for _ in range(2)]
        assert [r.headers["x-qwen-gateway-cache"] for r in sampled] == ["miss", "hit"]


async def test_cache_control_no_cache_refreshes_and_no_store_leaves_the_cache_alone(
    tmp_path: Path,
) -> None:
    async with cached(tmp_path) as g:
        assert text(await ask(g)) == "first answer"
        fresh = await ask(g, headers={"Cache-Control": "no-cache"})
        assert (text(fresh), fresh.headers["x-qwen-gateway-cache"]) == ("second answer", "miss")
        assert text(await ask(g)) == "second answer"  # no-cache stored the fresh answer
        private = await ask(g, headers={"Cache-Control": "no-store"})
        assert (text(private), private.headers["x-qwen-gateway-cache"]) == (
            "third answer", "bypass",
        )  # fmt: skip
        assert text(await ask(g)) == "second answer"  # no-store stored nothing
        new = await ask(g, max_tokens=40, headers={"Cache-Control": "no-store"})
        assert text(new) == "fourth answer"
        assert (await ask(g, max_tokens=40)).headers["x-qwen-gateway-cache"] == "miss"


async def test_a_hit_never_crosses_keys_unless_the_scope_is_shared(tmp_path: Path) -> None:
    async with cached(tmp_path / "tenant", auth=True) as g:
        a, b = await new_key(g), await new_key(g)
        assert text(await ask(g, a)) == "first answer"
        theirs = await ask(g, b)
        assert (text(theirs), theirs.headers["x-qwen-gateway-cache"]) == ("second answer", "miss")
        assert text(await ask(g, a)) == "first answer"
        assert text(await ask(g, b)) == "second answer"
    async with cached(tmp_path / "shared", {"scope": "shared"}, auth=True) as g:
        a, b = await new_key(g), await new_key(g)
        assert text(await ask(g, a)) == "first answer"
        shared = await ask(g, b)
        assert (text(shared), shared.headers["x-qwen-gateway-cache"]) == ("first answer", "hit")


async def test_excluded_keys_and_principals_bypass(tmp_path: Path) -> None:
    async with cached(tmp_path, {"exclude_principals": ["anonymous"]}) as g:
        assert [(await ask(g)).headers["x-qwen-gateway-cache"] for _ in range(2)] == [
            "bypass", "bypass",
        ]  # fmt: skip
    async with cached(tmp_path / "keys", {"exclude_keys": [2]}, auth=True) as g:
        await admin_key(g)  # key 1
        excluded, other = await new_key(g), await new_key(g)  # keys 2 and 3
        assert (await ask(g, excluded)).headers["x-qwen-gateway-cache"] == "bypass"
        assert (await ask(g, other)).headers["x-qwen-gateway-cache"] == "miss"


async def test_tool_call_answers_are_stored_only_when_configured(tmp_path: Path) -> None:
    call = '<tool_call>\n{"name": "lookup", "arguments": {"q": "x"}}\n</tool_call>'
    for config, expected in (({}, ["miss", "miss"]), ({"cache_tool_calls": True}, ["miss", "hit"])):
        async with cached(tmp_path / str(len(config)), config, replies=[call]) as g:
            answers = [await ask(g, tools=[TOOL]) for _ in range(2)]
            assert [r.json()["choices"][0]["finish_reason"] for r in answers] == ["tool_calls"] * 2
            assert [r.headers["x-qwen-gateway-cache"] for r in answers] == expected
            calls = [r.json()["choices"][0]["message"]["tool_calls"] for r in answers]
            assert calls[0][0]["function"]["name"] == "lookup"
            if expected[1] == "hit":
                assert calls[1] == calls[0]  # the same call, id included


async def test_filtered_answers_are_never_stored(tmp_path: Path) -> None:
    async with cached(tmp_path, stages=[Filtering()]) as g:
        answers = [await ask(g) for _ in range(2)]
        assert [r.json()["choices"][0]["finish_reason"] for r in answers] == ["content_filter"] * 2
        assert [r.headers["x-qwen-gateway-cache"] for r in answers] == ["miss", "miss"]


async def test_limits_apply_to_hits(tmp_path: Path) -> None:
    async with cached(tmp_path, auth=True) as g:
        key = await new_key(g, rpm=2)
        assert (await ask(g, key)).headers["x-qwen-gateway-cache"] == "miss"
        hit = await ask(g, key)
        assert hit.headers["x-qwen-gateway-cache"] == "hit"
        assert hit.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await ask(g, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await verdicts(g))["hit"] == 1  # the refused request was not served


async def test_a_hit_still_needs_the_model_allowed(tmp_path: Path) -> None:
    async with cached(tmp_path, {"scope": "shared"}, auth=True) as g:
        assert text(await ask(g, await new_key(g))) == "first answer"
        narrow = await new_key(g, models=["other"])
        refused = await ask(g, narrow)
        assert refused.status_code in (403, 404), refused.text


async def _usage_rows(g: InProcess, url: str) -> list[tuple[str | None, int, int]]:
    await g.container.store.writer.flush()
    db = Database(url)
    try:
        async with db.sessions() as session:
            rows = await session.execute(
                select(UsageRow.cache, UsageRow.prompt_tokens, UsageRow.completion_tokens)
                .where(UsageRow.path == "/v1/chat/completions")
                .order_by(UsageRow.id)
            )
            return [tuple(r) for r in rows]  # type: ignore[misc]
    finally:
        await db.aclose()


@pytest.mark.parametrize("billing", ["charged", "free"])
async def test_usage_rows_mark_hits_and_billing_decides_their_tokens(
    tmp_path: Path, billing: str
) -> None:
    async with cached(tmp_path, {"billing": billing}) as g:
        miss, hit, bypass = await ask(g), await ask(g), await ask(g, temperature=1)
        rows = await _usage_rows(g, g.container.settings.database_url)
    used = miss.json()["usage"]
    tokens = (used["prompt_tokens"], used["completion_tokens"])
    assert rows[0] == ("miss", *tokens)
    assert rows[1] == ("hit", *(tokens if billing == "charged" else (0, 0)))
    assert rows[2][0] == "bypass"
    assert hit.json()["usage"]["total_tokens"] == (sum(tokens) if billing == "charged" else 0)
    assert bypass.status_code == 200


async def test_the_local_store_stays_within_its_bytes_and_counts_evictions(tmp_path: Path) -> None:
    async with cached(tmp_path, {"max_bytes": 1024}) as g:
        for i in range(8):
            assert (await ask(g, max_tokens=10 + i)).status_code == 200
        page = (await g.http.get("/metrics")).text
        assert 0 < sample(page, "qwen_gateway_cache_bytes") <= 1024
        assert sample(page, "qwen_gateway_cache_evictions_total") > 0
        assert (await ask(g, max_tokens=10)).headers["x-qwen-gateway-cache"] == "miss"  # evicted
        assert (await ask(g, max_tokens=17)).headers["x-qwen-gateway-cache"] == "hit"  # kept


async def test_redis_unreachable_is_a_miss_and_the_request_succeeds(
    tmp_path: Path, redis_url: str
) -> None:
    prefix = f"test-cache-{secrets.token_hex(4)}"
    with proxied_redis(redis_url) as (proxy, url):
        config = {"backend": "redis", "redis_prefix": prefix}
        async with cached(tmp_path, config, redis={"url": url}, limits={"backend": "local"}) as g:
            assert (await ask(g)).headers["x-qwen-gateway-cache"] == "miss"
            assert (await ask(g)).headers["x-qwen-gateway-cache"] == "hit"
            proxy.down()
            down = await ask(g)
            assert (text(down), down.headers["x-qwen-gateway-cache"]) == ("second answer", "miss")
            page = (await g.http.get("/metrics")).text
            assert sample(page, "qwen_gateway_cache_errors_total", operation="get") >= 1
            proxy.up()
            assert (await ask(g)).headers["x-qwen-gateway-cache"] == "hit"


def test_no_cache_section_means_no_stage_and_redis_needs_a_url(tmp_path: Path) -> None:
    base = {"data_dir": str(tmp_path), "auth": {"enabled": False}}
    engines = {"qwen2.5-7b-instruct": scripted_engine("qwen2.5-7b-instruct", ["x"])}
    plain = Container(load_settings(base, env={}), engines=engines)  # type: ignore[arg-type]
    assert isinstance(plain.services.pipeline.generate, Route)
    with_cache = Container(load_settings({**base, "cache": {}}, env={}), engines=engines)  # type: ignore[arg-type]
    assert [type(s) for s in with_cache.services.pipeline.stages] == [ResponseCache]
    with pytest.raises(ConfigError, match=r"redis\.url"):
        Container(load_settings({**base, "cache": {"backend": "redis"}}, env={}), engines=engines)  # type: ignore[arg-type]


def _serve_args(tmp_path: Path, name: str, reply: str, redis_url: str, prefix: str) -> list[str]:
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump({
            "deployments": [{"name": "m", "engine": "scripted", "options": {"replies": [reply]}}],
            "redis": {"url": redis_url},
            "cache": {"backend": "redis", "redis_prefix": prefix},
        })
    )  # fmt: skip
    return ["--config", str(config)]


@pytest.mark.e2e
def test_two_gateway_processes_sharing_redis_serve_each_others_hits(
    tmp_path: Path, redis_url: str
) -> None:
    prefix = f"test-cache-{secrets.token_hex(4)}"
    a_port, b_port = free_port(), free_port()
    a_args = _serve_args(tmp_path, "a", "from process a", redis_url, prefix)
    b_args = _serve_args(tmp_path, "b", "from process b", redis_url, prefix)
    with (
        running_command([*a_args, "--port", str(a_port)], a_port, tmp_path / "a.log") as a,
        running_command([*b_args, "--port", str(b_port)], b_port, tmp_path / "b.log") as b,
        openai.OpenAI(base_url=a.base_url + "/v1", api_key="none", max_retries=0) as to_a,
        openai.OpenAI(base_url=b.base_url + "/v1", api_key="none", max_retries=0) as to_b,
    ):
        asked = to_a.chat.completions.with_raw_response.create(
            model="m",
            messages=ASK,
            temperature=0,  # type: ignore[arg-type]
        )
        assert asked.headers["x-qwen-gateway-cache"] == "miss"
        assert asked.parse().choices[0].message.content == "from process a"
        answered = to_b.chat.completions.with_raw_response.create(
            model="m",
            messages=ASK,
            temperature=0,  # type: ignore[arg-type]
        )
        assert answered.headers["x-qwen-gateway-cache"] == "hit"
        assert answered.parse().choices[0].message.content == "from process a"

        streams = []
        for client in (to_b, to_a):  # streamed: b answers, a replays b's answer
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=ASK, temperature=0, max_tokens=3, stream=True,  # type: ignore[arg-type]
            )  # fmt: skip
            deltas = [(c.choices[0].delta.content, c.choices[0].finish_reason)
                      for c in raw.parse() if c.choices]  # fmt: skip
            streams.append((raw.headers["x-qwen-gateway-cache"], deltas))
        assert [verdict for verdict, _ in streams] == ["miss", "hit"]
        assert streams[0][1] == streams[1][1]
        assert "".join(d or "" for d, _ in streams[1][1]) == "from process b"
        metrics = httpx.get(a.base_url + "/metrics").text
    assert sample(metrics, "qwen_gateway_cache_requests_total", result="hit") == 1


async def test_random_splits_bypass_sticky_splits_and_intent_are_keyed(tmp_path: Path) -> None:
    deployments = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    routing = {
        "splits": {
            "random": {"arms": {"a": 1, "b": 1}},
            "sticky": {"arms": {"a": 1, "b": 1}, "sticky": "user"},
        },
        "intent": {"routes": {"general": "a", "code": "b", "math": "c"}},
    }
    async with routed(tmp_path, deployments, routing=routing, cache={}) as g:

        async def verdict(model: str, user: str | None = None) -> tuple[str, str]:
            body = {"model": model, "messages": ASK, "temperature": 0}
            r = await g.http.post(
                "/v1/chat/completions", json={**body, "user": user} if user else body
            )
            return r.headers["x-qwen-gateway-cache"], r.json()["model"]

        assert [(await verdict("random"))[0] for _ in range(2)] == ["bypass", "bypass"]
        first = await verdict("sticky", "alice")
        assert first[0] == "miss"
        assert await verdict("sticky", "alice") == ("hit", first[1])
        served = await verdict("auto")
        assert served[0] == "miss"
        assert await verdict("auto") == ("hit", served[1])


async def test_an_answer_from_a_fallback_is_not_stored_under_the_primarys_key(
    tmp_path: Path,
) -> None:
    deployments = [{"name": "primary", "fallbacks": ["backup"]}, {"name": "backup"}]
    engines = {"primary": FlakyEngine(scripted("primary"), broken=True)}
    async with routed(tmp_path, deployments, engines, cache={}) as g:  # type: ignore[arg-type]
        for _ in range(2):
            r = await g.http.post("/v1/chat/completions", json={
                "model": "primary", "messages": ASK, "temperature": 0})  # fmt: skip
            assert (r.json()["model"], r.headers["x-qwen-gateway-cache"]) == ("backup", "miss")


async def test_an_answer_larger_than_an_entry_may_be_is_served_and_not_stored(
    tmp_path: Path,
) -> None:
    long = "word " * 80
    async with cached(tmp_path, {"max_entry_bytes": 256}, replies=[long, "short"]) as g:
        answers = [await ask(g) for _ in range(2)]
        assert [text(r) for r in answers] == [long, "short"]
        assert [r.headers["x-qwen-gateway-cache"] for r in answers] == ["miss", "miss"]
        again = await ask(g)  # the short answer was stored
        assert (text(again), again.headers["x-qwen-gateway-cache"]) == ("short", "hit")


def asked(content: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": content}]


async def test_near_duplicates_share_an_answer_within_a_caller_and_a_context(
    tmp_path: Path,
) -> None:
    async with cached(tmp_path, {"similar": {}}, auth=True) as g:
        key_a, key_b = await new_key(g), await new_key(g)
        first = await ask(g, key_a, messages=asked("What is the capital of Australia?"))
        assert (text(first), first.headers["x-qwen-gateway-cache"]) == ("first answer", "miss")
        near = await ask(g, key_a, messages=asked("what is the capital of australia"))
        assert (text(near), near.headers["x-qwen-gateway-cache"]) == ("first answer", "hit")
        # a near-miss (another number), another caller, another system prompt: no reuse
        number = await ask(g, key_a, messages=asked("What is 2+3?"))
        assert text(number) == "second answer"
        assert text(await ask(g, key_a, messages=asked("What is 2+2?"))) == "third answer"
        other = await ask(g, key_b, messages=asked("what is the capital of australia"))
        assert other.headers["x-qwen-gateway-cache"] == "miss"
        system = await ask(
            g, key_a, messages=asked("what is the capital of australia", system="Be brief.")
        )
        assert system.headers["x-qwen-gateway-cache"] == "miss"
        page = (
            await g.http.get("/metrics", headers={"Authorization": f"Bearer {await admin_key(g)}"})
        ).text
        assert sample(page, "qwen_gateway_cache_near_lookups_total", result="hit") == 1.0


def test_near_duplicates_need_the_tenant_scope(tmp_path: Path) -> None:
    tree = {"data_dir": str(tmp_path), "cache": {"scope": "shared", "similar": {}}}
    with pytest.raises(ConfigError, match=r"cache\.similar needs cache\.scope: tenant"):
        Container(
            load_settings(tree, env={}), engines={"qwen2.5-tiny": scripted_engine("x", ["y"])}
        )


async def test_a_request_asking_for_logprobs_is_never_answered_from_the_cache(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    tree: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "auth": {"enabled": False},
        "cache": {},
        "model": {"model": str(tiny_model_dir), "served_name": "m", "max_batch_size": 2},
    }
    async with open_in_process(Container(load_settings(tree, env={}))) as g:
        plain = await ask(g, max_tokens=4)
        assert plain.headers["x-qwen-gateway-cache"] == "miss"
        assert (await ask(g, max_tokens=4)).headers["x-qwen-gateway-cache"] == "hit"
        for _ in range(2):  # the same request with logprobs: answered afresh, with them
            got = await ask(g, max_tokens=4, logprobs=True, top_logprobs=1)
            assert got.headers["x-qwen-gateway-cache"] == "bypass"
            assert len(got.json()["choices"][0]["logprobs"]["content"]) >= 1
