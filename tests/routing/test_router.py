"""Routing through the API: registry and aliases, fallbacks in order, context-window and
capability fallbacks, replicas with circuit breakers (injected clock), failover before the
first token only, and the route header."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import ChatMessage, ChatRequest
from qwen_gateway.errors import InvalidModelOutput, InvalidRequest, ModelNotFound, UpstreamError
from qwen_gateway.routing.breaker import BreakerState
from qwen_gateway.routing.registry import RouteContext
from routing.helpers import routed, scripted
from support.flaky import FlakyEngine
from support.metrics import sample
from tenancy.helpers import client, new_key

ASK = [{"role": "user", "content": "Hello"}]
TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}}}}]  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


async def _chat(client: openai.AsyncOpenAI, model: str, **kw: Any) -> tuple[str, str, str]:
    """(response model, content, route header) of one chat request."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=kw.pop("messages", ASK), **kw
    )
    completion = raw.parse()
    return (
        completion.model,
        completion.choices[0].message.content or "",
        raw.headers.get("x-qwen-gateway-route", ""),
    )


async def test_models_lists_deployments_aliases_splits_and_the_intent_model(
    tmp_path: Path,
) -> None:
    deployments = [
        {"name": "qwen-general", "aliases": ["qwen", "gpt-4o-mini"]},
        {"name": "qwen-coder"},
        {"name": "qwen-math"},
    ]
    routing = {
        "splits": {"qwen-canary": {"arms": {"qwen-general": 90, "qwen-coder": 10}}},
        "intent": {"routes": {"code": "qwen-coder", "math": "qwen-math",
                              "general": "qwen-general"}},
    }  # fmt: skip
    async with routed(tmp_path, deployments, routing=routing) as g:
        models = await g.client.models.list()
        assert {m.id for m in models.data} == {
            "qwen-general", "qwen", "gpt-4o-mini", "qwen-coder", "qwen-math", "qwen-canary",
            "auto",
        }  # fmt: skip
        assert (await g.client.models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
        model, content, route = await _chat(g.client, "gpt-4o-mini")
        assert (model, content, route) == ("qwen-general", "from qwen-general",
                                           "deployment=qwen-general")  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            await _chat(g.client, "qwen-unknown")


async def test_fallbacks_are_tried_in_order_when_every_replica_fails(tmp_path: Path) -> None:
    a, b = FlakyEngine(scripted("a"), broken=True), FlakyEngine(scripted("b"), broken=True)
    c = FlakyEngine(scripted("c"))
    deployments = [{"name": "a", "fallbacks": ["b", "c-alias"]}, {"name": "b"},
                   {"name": "c", "aliases": ["c-alias"]}]  # fmt: skip
    async with routed(tmp_path, deployments, {"a": a, "b": b, "c": c}) as g:
        model, content, route = await _chat(g.client, "a")
        assert (model, content) == ("c", "from c")
        assert route == (
            "retry=a@0 (engine_unavailable); fallback=b (a: engine_unavailable); "
            "retry=b@0 (engine_unavailable); fallback=c (b: engine_unavailable); deployment=c"
        )
        assert (a.attempts, b.attempts, c.attempts) == (1, 1, 1)
        b.broken = False
        assert (await _chat(g.client, "a"))[0] == "b"
        # streamed: the same plan, and the chunks name the deployment that answered
        stream = await g.client.chat.completions.create(model="a", messages=ASK, stream=True)
        chunks = [chunk async for chunk in stream]
        assert {chunk.model for chunk in chunks} == {"b"}
        metrics = (await g.http.get("/metrics")).text
        assert sample(metrics, "qwen_gateway_route_fallbacks_total", deployment="c",
                      reason="engine_unavailable") == 1  # fmt: skip
        assert sample(metrics, "qwen_gateway_route_fallbacks_total", deployment="b") == 2
        assert sample(metrics, "qwen_gateway_replica_attempts_total", deployment="a",
                      outcome="error") == 3  # fmt: skip
        # every deployment of the plan failed: the last failure's status, in OpenAI's envelope
        b.broken = c.broken = True
        with pytest.raises(openai.InternalServerError) as info:
            await _chat(g.client, "a")
        assert info.value.status_code == 503
        assert info.value.code == "engine_unavailable"


async def test_client_errors_do_not_fail_over(tmp_path: Path) -> None:
    a0, a1 = FlakyEngine(scripted("a"), broken=True), FlakyEngine(scripted("a"), broken=True)
    for replica in (a0, a1):
        replica.error = InvalidRequest("injected fault: a bad parameter", param="temperature")
    b = FlakyEngine(scripted("b"))
    deployments = [{"name": "a", "fallbacks": ["b"]}, {"name": "b"}]
    routing = {"breaker": {"failures": 1}}
    async with routed(tmp_path, deployments, {"a": [a0, a1], "b": b}, routing=routing) as g:
        with pytest.raises(openai.BadRequestError) as info:
            await _chat(g.client, "a")
        assert info.value.param == "temperature"
        # neither the other replica nor the fallback was tried
        assert (a0.attempts + a1.attempts, b.attempts) == (1, 0)
        metrics = (await g.http.get("/metrics")).text
        for replica in ("0", "1"):  # the client's mistake does not count against a replica
            assert sample(metrics, "qwen_gateway_replica_breaker_state", deployment="a",
                          replica=replica) == 0  # fmt: skip


async def test_a_request_too_long_for_the_window_goes_to_a_larger_fallback(
    tmp_path: Path,
) -> None:
    deployments = [{"name": "small", "fallbacks": ["mid", "large"]}, {"name": "mid"},
                   {"name": "large"}]  # fmt: skip
    engines = {"small": scripted("small", 96), "mid": scripted("mid", 64),
               "large": scripted("large", 4096)}  # fmt: skip
    async with routed(tmp_path, deployments, engines) as g:
        assert (await _chat(g.client, "small", max_tokens=8))[0] == "small"
        long = [{"role": "user", "content": "word " * 150}]
        model, _, route = await _chat(g.client, "small", messages=long, max_tokens=8)
        assert model == "large"  # mid's window is smaller still: skipped
        assert route == ("fallback=mid (small: context window); "
                         "fallback=large (mid: context window); deployment=large")  # fmt: skip
        huge = [{"role": "user", "content": "word " * 5000}]
        with pytest.raises(openai.BadRequestError) as info:
            await _chat(g.client, "small", messages=huge, max_tokens=8)
        assert info.value.code == "context_length_exceeded"


async def test_a_deployment_without_a_capability_is_skipped(tmp_path: Path) -> None:
    deployments = [
        {"name": "plain", "capabilities": {"tools": False}, "fallbacks": ["tooled"]},
        {"name": "tooled"},
        {"name": "lonely", "capabilities": {"tools": False, "json_schema": False}},
    ]
    async with routed(tmp_path, deployments) as g:
        assert (await _chat(g.client, "plain"))[0] == "plain"
        model, _, route = await _chat(g.client, "plain", tools=TOOLS)
        assert (model, route) == ("tooled", "fallback=tooled (plain: no tools); deployment=tooled")
        assert (await _chat(g.client, "plain", tools=TOOLS, tool_choice="none"))[0] == "plain"
        with pytest.raises(openai.BadRequestError) as info:
            await _chat(g.client, "lonely", tools=TOOLS)
        assert info.value.param == "tools"
        with pytest.raises(openai.BadRequestError) as info:
            await _chat(g.client, "lonely", response_format={"type": "json_object"})
        assert info.value.param == "response_format"


async def test_a_failing_replica_opens_its_breaker_then_a_probe_decides(tmp_path: Path) -> None:
    clock = Clock()
    bad, good = FlakyEngine(scripted("chat"), broken=True), FlakyEngine(scripted("chat"))
    routing = {"breaker": {"failures": 2, "cooldown_seconds": 30}}

    async def breaker_state(g: Any) -> float:
        text = (await g.http.get("/metrics")).text
        return sample(text, "qwen_gateway_replica_breaker_state", deployment="chat", replica="0")

    async def until_attempted(g: Any, attempts: int) -> None:
        for _ in range(60):  # the replicas' order is random: ask until the bad one was tried
            model, _, _ = await _chat(g.client, "chat")
            assert model == "chat"  # never a client error
            if bad.attempts >= attempts:
                return
        raise AssertionError(f"replica 0 was tried {bad.attempts} times, not {attempts}")

    async with routed(tmp_path, [{"name": "chat"}], {"chat": [bad, good]},
                      routing=routing, clock=clock) as g:  # fmt: skip
        await until_attempted(g, 2)
        assert await breaker_state(g) == 2  # open
        for _ in range(10):
            await _chat(g.client, "chat")
        assert bad.attempts == 2  # open: not tried at all
        clock.now += 30  # half-open: one probe, which fails
        await until_attempted(g, 3)
        assert await breaker_state(g) == 2
        for _ in range(10):
            await _chat(g.client, "chat")
        assert bad.attempts == 3
        bad.broken = False  # it recovered; after the cooldown the probe closes the breaker
        clock.now += 30
        assert await breaker_state(g) == 1  # half-open
        await until_attempted(g, 4)
        assert await breaker_state(g) == 0
        text = (await g.http.get("/metrics")).text
        assert sample(text, "qwen_gateway_replica_attempts_total", deployment="chat",
                      replica="0", outcome="error") == 3  # fmt: skip


async def test_a_deployment_at_capacity_sends_new_requests_to_its_fallback(
    tmp_path: Path,
) -> None:
    deployments = [{"name": "busy", "max_concurrency": 1, "fallbacks": ["spare"]},
                   {"name": "spare"}, {"name": "alone", "max_concurrency": 1}]  # fmt: skip
    async with routed(tmp_path, deployments) as g:
        router = g.container.router

        def request(model: str) -> ChatRequest:
            return ChatRequest(model, (ChatMessage("user", "Hi"),))

        held = router.stream(request("busy"), RouteContext(), RequestRecord("r1"))
        await anext(held)  # in flight on busy
        second = RequestRecord("r2")
        events = router.stream(request("busy"), RouteContext(), second)
        await anext(events)
        assert second.deployment == "spare"
        assert second.route == "fallback=spare (busy: at capacity); deployment=spare"
        await events.aclose()
        await held.aclose()
        third = RequestRecord("r3")
        events = router.stream(request("busy"), RouteContext(), third)
        await anext(events)
        assert third.deployment == "busy"  # free again
        await events.aclose()
        held = router.stream(request("alone"), RouteContext(), RequestRecord("r4"))
        await anext(held)
        with pytest.raises(openai.InternalServerError) as info:
            await _chat(g.client, "alone")
        assert info.value.status_code == 503 and info.value.code == "engine_overloaded"
        await held.aclose()
        assert [d.outstanding for d in router.deployments] == [0, 0, 0]


async def test_concurrent_requests_share_the_replicas(tmp_path: Path) -> None:
    engines = [FlakyEngine(scripted("chat")) for _ in range(3)]
    async with routed(tmp_path, [{"name": "chat"}], {"chat": engines}) as g:
        await asyncio.gather(*(_chat(g.client, "chat") for _ in range(30)))
        assert sum(e.attempts for e in engines) == 30
        assert all(e.attempts > 0 for e in engines)
        assert [r.outstanding for r in g.container.router.deployments[0].replicas] == [0, 0, 0]


async def test_health_checks_put_a_down_replica_last(tmp_path: Path) -> None:
    down, up = FlakyEngine(scripted("chat")), FlakyEngine(scripted("chat"))

    async def healthy(g: Any) -> float:
        await g.container.router.check_health()  # one round, as the background loop runs it
        text = (await g.http.get("/metrics")).text
        return sample(text, "qwen_gateway_replica_healthy", deployment="chat", replica="0")

    async with routed(tmp_path, [{"name": "chat"}], {"chat": [down, up]}) as g:
        await g.container.router.aclose()  # the background rounds stop: this test runs them
        assert await healthy(g) == 1
        down.healthy = False
        assert await healthy(g) == 0
        for _ in range(10):
            assert (await _chat(g.client, "chat"))[0] == "chat"
        assert (down.attempts, up.attempts) == (0, 10)
        assert (await g.http.get("/ready")).status_code == 200  # one replica up is enough
        up.healthy = False
        assert (await g.http.get("/ready")).status_code == 503
        assert (await _chat(g.client, "chat"))[0] == "chat"  # all down: still tried, last
        down.healthy = True
        assert await healthy(g) == 1


async def test_after_the_first_event_a_failure_ends_the_stream_without_failover(
    tmp_path: Path,
) -> None:
    first, second = FlakyEngine(scripted("chat")), FlakyEngine(scripted("chat"))
    for replica in (first, second):
        replica.fail_after = 1
        replica.error = UpstreamError("injected fault: the replica died mid-stream")
    deployments = [{"name": "chat", "fallbacks": ["spare"]}, {"name": "spare"}]
    spare = FlakyEngine(scripted("spare"))
    routing = {"breaker": {"failures": 1}}
    async with routed(tmp_path, deployments, {"chat": [first, second], "spare": spare},
                      routing=routing) as g:  # fmt: skip
        stream = await g.client.chat.completions.create(model="chat", messages=ASK, stream=True)
        with pytest.raises(openai.APIError, match="mid-stream"):
            async for _ in stream:
                pass
        # nothing was retried once a token had gone out
        assert (first.attempts + second.attempts, spare.attempts) == (1, 0)
        text = (await g.http.get("/metrics")).text
        assert sample(text, "qwen_gateway_replica_attempts_total", deployment="chat",
                      outcome="stream_error") == 1  # fmt: skip
        states = {r.name: r.breaker.state for r in g.container.router.deployments[0].replicas}
        assert sorted(states.values()) == [BreakerState.CLOSED, BreakerState.OPEN]


async def test_a_replica_that_always_dies_mid_stream_opens_its_breaker(tmp_path: Path) -> None:
    dying = FlakyEngine(scripted("chat"))
    dying.fail_after = 1
    dying.error = UpstreamError("injected fault: died mid-stream")
    routing = {"breaker": {"failures": 3}}
    async with routed(tmp_path, [{"name": "chat"}], {"chat": dying}, routing=routing) as g:
        for _ in range(3):
            stream = await g.client.chat.completions.create(model="chat", messages=ASK, stream=True)
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass
        with pytest.raises(openai.InternalServerError) as info:  # open now: refused at once
            await _chat(g.client, "chat")
        assert info.value.status_code == 503 and dying.attempts == 3


async def test_a_misconfigured_or_crashing_replica_is_passed_over(tmp_path: Path) -> None:
    wrong_model, crash = (FlakyEngine(scripted("chat"), broken=True) for _ in range(2))
    wrong_model.error = ModelNotFound("injected fault: the upstream does not serve this model")
    crash.error = RuntimeError("injected fault: a plugin engine crashed")  # type: ignore[assignment]
    good = FlakyEngine(scripted("chat"))
    routing = {"strategy": "least_outstanding"}
    async with routed(tmp_path, [{"name": "chat"}], {"chat": [wrong_model, crash, good]},
                      routing=routing) as g:  # fmt: skip
        sent = 0
        while sent < 60 and not (wrong_model.attempts and crash.attempts):  # random order
            assert (await _chat(g.client, "chat"))[0] == "chat"  # never a client error
            sent += 1
        assert wrong_model.attempts > 0 and crash.attempts > 0
        assert good.attempts == sent  # every request ended on the good replica


async def test_max_attempts_bounds_the_engine_starts_of_one_request(tmp_path: Path) -> None:
    replicas = [FlakyEngine(scripted("chat"), broken=True) for _ in range(5)]
    async with routed(tmp_path, [{"name": "chat"}], {"chat": replicas},
                      routing={"max_attempts": 2}) as g:  # fmt: skip
        with pytest.raises(openai.InternalServerError):
            await _chat(g.client, "chat")
        assert sum(r.attempts for r in replicas) == 2


async def test_a_request_cancelled_before_its_first_event_releases_everything(
    tmp_path: Path,
) -> None:
    clock = Clock()
    stalled = FlakyEngine(scripted("chat"))
    routing = {"breaker": {"failures": 1, "cooldown_seconds": 10}}
    async with routed(tmp_path, [{"name": "chat"}], {"chat": stalled}, routing=routing,
                      clock=clock) as g:  # fmt: skip
        router = g.container.router
        (replica,) = router.deployments[0].replicas
        stalled.broken = True
        with pytest.raises(openai.InternalServerError):
            await _chat(g.client, "chat")
        assert replica.breaker.state is BreakerState.OPEN
        clock.now += 10  # half-open: the next request is the probe
        stalled.broken = False
        stalled.stall = asyncio.Event()
        pending = asyncio.ensure_future(
            anext(router.stream(ChatRequest("chat", (ChatMessage("user", "Hi"),)),
                                RouteContext(), RequestRecord("r")))
        )  # fmt: skip
        for _ in range(1000):  # until the probe is waiting inside the engine
            if stalled.attempts == 2:
                break
            await asyncio.sleep(0)
        assert replica.outstanding == 1 and not replica.breaker.available()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert replica.outstanding == 0 and router.deployments[0].outstanding == 0
        assert replica.breaker.state is BreakerState.HALF_OPEN and replica.breaker.available()
        stalled.stall = None
        assert (await _chat(g.client, "chat"))[0] == "chat"  # the next probe closes it
        assert replica.breaker.state is BreakerState.CLOSED


async def test_a_long_prompt_skips_a_small_window_before_its_engine_is_asked(
    tmp_path: Path,
) -> None:
    # an upstream that reports a too-long prompt as a plain 400 (as vLLM does) is never asked
    small = FlakyEngine(scripted("small", 64), broken=True)
    small.error = InvalidRequest("injected fault: a 400 without a context-length code")
    deployments = [{"name": "small", "fallbacks": ["large"]}, {"name": "large"}]
    async with routed(tmp_path, deployments, {"small": small}) as g:
        long = [{"role": "user", "content": "word " * 100}]
        model, _, route = await _chat(g.client, "small", messages=long, max_tokens=4)
        assert (model, small.attempts) == ("large", 0)
        assert route == "fallback=large (small: context window); deployment=large"


async def test_output_that_breaks_the_requested_format_is_not_a_replica_fault(
    tmp_path: Path,
) -> None:
    """A forced tool call or JSON answer that fails validation (502 invalid_model_output) is
    the model's answer: no failover, and the breaker stays closed however often it happens."""
    sloppy = FlakyEngine(scripted("chat"), broken=True)
    sloppy.error = InvalidModelOutput("injected fault: arguments do not match the schema")
    spare = FlakyEngine(scripted("spare"))
    deployments = [{"name": "chat", "fallbacks": ["spare"]}, {"name": "spare"}]
    async with routed(tmp_path, deployments, {"chat": sloppy, "spare": spare},
                      routing={"breaker": {"failures": 2}}) as g:  # fmt: skip
        for _ in range(6):
            with pytest.raises(openai.InternalServerError) as info:
                await _chat(g.client, "chat")
            assert info.value.status_code == 502 and info.value.code == "invalid_model_output"
        assert (sloppy.attempts, spare.attempts) == (6, 0)
        (replica,) = g.container.router.deployments[0].replicas
        assert replica.breaker.state is BreakerState.CLOSED


# ---- who may be served by what, and the limits of the deployment that serves ----------------

GUARDED = [
    {"name": "small", "capabilities": {"tools": False}, "fallbacks": ["big"]},
    {"name": "big", "aliases": ["gpt-4o"]},
    {"name": "mid"},
]
GUARDED_ROUTING = {
    "splits": {"ab": {"arms": {"small": 50, "mid": 50}}, "canary": {"arms": {"big": 1}}},
    "intent": {"classifier": "rules", "routes": {"code": "big", "math": "mid",
                                                 "general": "small"}},
}  # fmt: skip
LONG = [{"role": "user", "content": "word " * 300}]  # more than small's window of 256
CODE = [{"role": "user", "content": "Write a Python function that reverses a list"}]


async def test_a_caller_is_served_only_by_deployments_it_may_use(tmp_path: Path) -> None:
    engines = {"small": scripted("small", 256)}
    async with routed(tmp_path, GUARDED, engines, routing=GUARDED_ROUTING,
                      auth={"enabled": True}) as g:  # fmt: skip
        only_small = client(g, await new_key(g, models=["small"]))
        assert (await _chat(only_small, "small"))[0] == "small"
        for model in ("big", "gpt-4o", "ab", "auto", "canary"):
            with pytest.raises(openai.PermissionDeniedError) as denied:
                await _chat(only_small, model)
            assert denied.value.code == "model_not_allowed"
        # what would fall back to big is refused, or answered by small: never by big
        with pytest.raises(openai.BadRequestError) as info:
            await _chat(only_small, "small", messages=LONG)
        assert info.value.code == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as info:
            await _chat(only_small, "small", max_tokens=1000)
        assert info.value.code == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as info:
            await _chat(only_small, "small", tools=TOOLS)
        assert info.value.param == "tools"
        # allowed a split: its arms serve, not a fallback the key may not use
        only_ab = client(g, await new_key(g, models=["ab"]))
        served: set[str] = set()
        for _ in range(60):  # the arms are picked at random: until both were
            try:
                served.add((await _chat(only_ab, "ab", messages=LONG, max_tokens=4))[0])
            except openai.BadRequestError as exc:  # the small arm: too long, no fallback
                assert exc.code == "context_length_exceeded"
                served.add("refused")
            if len(served) == 2:
                break
        assert served == {"mid", "refused"}
        with pytest.raises(openai.PermissionDeniedError):
            await _chat(only_ab, "small")  # an arm is not granted by name
        # allowed the fallback too (by an alias): the fallback serves
        both = client(g, await new_key(g, models=["small", "gpt-4o"]))
        model, _, route = await _chat(both, "small", messages=LONG, max_tokens=4)
        assert (model, route) == ("big", "fallback=big (small: context window); deployment=big")
        assert (await _chat(both, "small", tools=TOOLS))[0] == "big"


async def test_a_model_limit_holds_for_traffic_routed_to_it(tmp_path: Path) -> None:
    engines = {"small": scripted("small", 256)}
    async with routed(tmp_path, GUARDED, engines, routing=GUARDED_ROUTING,
                      limits={"models": {"big": {"rpm": 2}, "ab": {"rpm": 1}}}) as g:  # fmt: skip
        raw = await g.client.chat.completions.with_raw_response.create(
            model="auto", messages=CODE, max_tokens=4
        )
        assert raw.parse().model == "big"
        # a caller without limits of its own sees no x-ratelimit-* (big's are everyone's)
        assert not [h for h in raw.headers if h.startswith("x-ratelimit")]
        assert (await _chat(g.client, "small", messages=LONG, max_tokens=4))[0] == "big"
        for model, messages in (("canary", ASK), ("auto", CODE), ("small", LONG), ("big", ASK)):
            with pytest.raises(openai.RateLimitError) as refused:
                await _chat(g.client, model, messages=messages, max_tokens=4)
            assert "model:big" in refused.value.message
            assert refused.value.response.headers["retry-after"]
            assert not [h for h in refused.value.response.headers if h.startswith("x-ratelimit")]
        assert (await _chat(g.client, "small"))[0] == "small"  # small has no limit
        # a limit on a split's name counts the requests asking for it, whichever arm serves
        assert (await _chat(g.client, "ab"))[0] in {"small", "mid"}
        with pytest.raises(openai.RateLimitError) as refused:
            await _chat(g.client, "ab")
        assert "model:ab" in refused.value.message


async def test_failing_over_gives_the_admission_of_the_deployment_back(tmp_path: Path) -> None:
    down = FlakyEngine(scripted("a"), broken=True)
    deployments = [{"name": "a", "fallbacks": ["b"]}, {"name": "b"}]
    async with routed(tmp_path, deployments, {"a": down}, routing={"breaker": {"failures": 9}},
                      limits={"models": {"a": {"rpm": 1, "max_concurrency": 1}}}) as g:  # fmt: skip
        for _ in range(3):  # a is admitted each time, fails, and b serves: a's rpm is unspent
            assert (await _chat(g.client, "a"))[0] == "b"
        assert down.attempts == 3
        down.broken = False
        assert (await _chat(g.client, "a"))[0] == "a"
        with pytest.raises(openai.RateLimitError):
            await _chat(g.client, "a")


async def test_keyed_target_names_what_a_request_is_sent_to_when_it_is_not_random(
    tmp_path: Path,
) -> None:
    deployments = [{"name": "a", "aliases": ["a-alias"]}, {"name": "b"}]
    routing = {
        "splits": {
            "random": {"arms": {"a": 1, "b": 1}},
            "by-key": {"arms": {"a-alias": 1, "b": 1}, "sticky": "key"},
        },
        "intent": {"routes": {"general": "a", "code": "random"}},
    }
    async with routed(tmp_path, deployments, routing=routing) as g:
        router = g.container.router
        alice, bob = RouteContext("key:1"), RouteContext("key:2", user="u")
        assert router.keyed_target("a", alice) == router.keyed_target("a-alias", alice) == "a"
        assert router.keyed_target("random", alice) is None
        picks = {router.keyed_target("by-key", RouteContext(f"key:{i}")) for i in range(40)}
        assert picks == {"a", "b"}  # an arm (the alias as its deployment), the same each time
        assert router.keyed_target("by-key", bob) == router.keyed_target("by-key", bob)
        assert router.keyed_target("auto", alice) is None  # a route leads to a random split
        assert router.keyed_target("unknown", alice) is None
    routing["intent"] = {"routes": {"general": "a", "code": "by-key"}}
    async with routed(tmp_path / "sticky", deployments, routing=routing) as g:
        assert g.container.router.keyed_target("auto", RouteContext("key:1")) == "auto"
