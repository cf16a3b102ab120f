"""The Anthropic Messages API (/v1/messages, /v1/messages/count_tokens) through the real
pipeline, with the official ``anthropic`` SDK (and LangChain's ChatAnthropic) as the oracle.

Responses and stream events are checked by parsing the raw JSON with the SDK's own pydantic
models (there is no Anthropic OpenAPI document to validate against)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import jsonschema
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import select
from test_request_properties import _ABSENT, JSON_VALUES, _set

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.core.types import ToolCallDelta
from qwen_gateway.engines.scripted import scripted_engine
from qwen_gateway.store.tables import UsageRow
from support.fixtures import MODEL, InProcess, open_in_process
from support.flaky import FlakyEngine
from support.metrics import sample
from support.server import Server
from tenancy.helpers import admin_key, new_key, secured

ASK = [{"role": "user", "content": "Say something."}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["c", "f"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ADD = {
    "name": "add",
    "input_schema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
}
SCHEMAS = {t["name"]: t["input_schema"] for t in (WEATHER, ADD)}
EVENT = TypeAdapter(RawMessageStreamEvent)


@asynccontextmanager
async def sdk(g: InProcess, key: str = "unused") -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK in-process (it speaks httpx2, so it has its own ASGI transport)."""
    transport = httpx2.ASGITransport(app=g.app)
    async with (
        httpx2.AsyncClient(transport=transport, base_url="http://gateway") as http,
        anthropic.AsyncAnthropic(
            base_url="http://gateway", api_key=key, http_client=http, max_retries=0
        ) as client,
    ):
        yield client


def check_error(resp: httpx.Response, status: int, error_type: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def parse_sse(raw: str) -> list[dict[str, Any]]:
    """Each frame's ``event:`` name must match its data's ``type``."""
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def check_order(events: list[dict[str, Any]]) -> None:
    """message_start first (then ping), message_stop last, blocks opened and closed in turn."""
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["message_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    open_index: int | None = None
    seen = -1
    for e in events:
        if e["type"] == "ping":  # not in the SDK's event union: its stream skips pings
            assert e == {"type": "ping"}
            continue
        EVENT.validate_python(e, strict=True)
        if e["type"] == "content_block_start":
            assert open_index is None and e["index"] == seen + 1
            open_index = seen = e["index"]
        elif e["type"] == "content_block_delta":
            assert e["index"] == open_index
        elif e["type"] == "content_block_stop":
            assert e["index"] == open_index
            open_index = None
    assert open_index is None


# ---- on the tiny model --------------------------------------------------------------


async def test_a_plain_message_parses_as_the_sdk_message(gateway: InProcess) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": ASK}
    resp = await gateway.http.post("/v1/messages", json=body)
    assert resp.status_code == 200, resp.text
    message = Message.model_validate(resp.json(), strict=True)
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert message.model == MODEL and message.type == "message"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 8 and message.usage.input_tokens > 0
    assert all(b.type == "text" for b in message.content)

    async with sdk(gateway) as client:
        reply = await client.messages.create(
            model=MODEL, max_tokens=5, messages=ASK, metadata={"user_id": "u-1"},
            extra_body={"temperature": 0.0, "top_p": 0.9, "top_k": 20},
        )  # type: ignore[arg-type]  # fmt: skip
    assert reply.stop_reason in ("end_turn", "max_tokens")


async def test_system_as_string_or_blocks_is_the_same_prompt(gateway: InProcess) -> None:
    async with sdk(gateway) as client:
        await _system_prompts(client)


async def _system_prompts(client: anthropic.AsyncAnthropic) -> None:
    plain = await client.messages.count_tokens(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    as_text = await client.messages.count_tokens(
        model=MODEL,
        messages=ASK,
        system="Answer in French.",  # type: ignore[arg-type]
    )
    as_blocks = await client.messages.count_tokens(
        model=MODEL, messages=ASK,  # type: ignore[arg-type]
        system=[{"type": "text", "text": "Answer in "}, {"type": "text", "text": "French."}],
    )  # fmt: skip
    assert as_text.input_tokens == as_blocks.input_tokens != plain.input_tokens
    reply = await client.messages.create(
        model=MODEL, max_tokens=4, messages=ASK,  # type: ignore[arg-type]
        system=[{"type": "text", "text": "Answer in French."}],
    )  # fmt: skip
    assert reply.usage.input_tokens == as_text.input_tokens


async def test_count_tokens_equals_the_input_tokens_used(gateway: InProcess) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather <|im_start|> in Oslo?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Oslo", "unit": "c"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C"},
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ]  # fmt: skip
    body = {"model": MODEL, "messages": messages, "tools": [WEATHER, ADD], "system": "Be brief."}
    counted = await gateway.http.post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200, counted.text
    count = MessageTokensCount.model_validate(counted.json(), strict=True)
    used = await gateway.http.post("/v1/messages", json={**body, "max_tokens": 3})
    assert used.status_code == 200, used.text
    assert count.input_tokens == used.json()["usage"]["input_tokens"] > 0


async def test_the_stream_helper_and_the_raw_event_order(gateway: InProcess) -> None:
    async with (
        sdk(gateway) as client,
        client.messages.stream(model=MODEL, max_tokens=12, messages=ASK) as stream,  # type: ignore[arg-type]
    ):
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0

    body = {"model": MODEL, "max_tokens": 12, "messages": ASK, "stream": True}
    async with gateway.http.stream("POST", "/v1/messages", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = parse_sse((await resp.aread()).decode())
    check_order(events)
    start = events[0]["message"]
    assert start["usage"]["input_tokens"] > 0 and start["stop_reason"] is None
    delta = events[-2]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]


@pytest.mark.parametrize(
    "choice", [{"type": "any"}, {"type": "tool", "name": "add"}], ids=["any", "tool"]
)
async def test_forced_tool_use_gives_valid_input_and_a_result_turn_is_accepted(
    gateway: InProcess, choice: dict[str, Any]
) -> None:
    async with sdk(gateway) as client:
        await _tool_round_trip(client, choice)


async def _tool_round_trip(client: anthropic.AsyncAnthropic, choice: dict[str, Any]) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=80, messages=ASK, tools=[WEATHER, ADD],  # type: ignore[list-item]
        tool_choice=choice,  # type: ignore[arg-type]
    )  # fmt: skip
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses
    for use in uses:
        assert use.name in ({"add"} if choice["type"] == "tool" else set(SCHEMAS))
        jsonschema.validate(use.input, SCHEMAS[use.name])
    follow = await client.messages.create(
        model=MODEL, max_tokens=4, tools=[WEATHER, ADD],  # type: ignore[list-item]
        messages=[
            *ASK,
            {"role": "assistant", "content": message.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": u.id, "content": "42"} for u in uses
            ]},
        ],  # type: ignore[list-item]
    )  # fmt: skip
    assert follow.stop_reason in ("end_turn", "max_tokens", "tool_use")


async def test_streamed_tool_use_sends_input_json_deltas(gateway: InProcess) -> None:
    body = {
        "model": MODEL, "max_tokens": 80, "messages": ASK, "stream": True,
        "tools": [WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }  # fmt: skip
    async with gateway.http.stream("POST", "/v1/messages", json=body) as resp:
        events = parse_sse((await resp.aread()).decode())
    check_order(events)
    starts = [e for e in events if e["type"] == "content_block_start"]
    calls = [s for s in starts if s["content_block"]["type"] == "tool_use"]
    assert len(calls) == 1 and calls[0] == starts[-1]  # one call: parallel use disabled
    partial = "".join(
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
    )
    jsonschema.validate(json.loads(partial), WEATHER["input_schema"])
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    async with (
        sdk(gateway) as client,
        client.messages.stream(
            model=MODEL, max_tokens=80, messages=ASK, tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "any"},
        ) as stream,
    ):  # fmt: skip
        final = await stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses and final.stop_reason == "tool_use"
    for use in uses:  # parallel calls allowed
        jsonschema.validate(use.input, WEATHER["input_schema"])


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
async def test_output_config_format_gives_json_valid_against_the_schema(
    gateway: InProcess, stream: bool
) -> None:
    fmt = {"format": {"type": "json_schema", "schema": PERSON}}
    async with sdk(gateway) as client:
        if stream:
            async with client.messages.stream(
                model=MODEL,
                max_tokens=60,
                messages=ASK,
                output_config=fmt,  # type: ignore[arg-type]
            ) as s:
                message = await s.get_final_message()
        else:
            message = await client.messages.create(
                model=MODEL,
                max_tokens=60,
                messages=ASK,
                output_config=fmt,  # type: ignore[arg-type]
            )
    text = "".join(b.text for b in message.content if b.type == "text")
    jsonschema.validate(json.loads(text), PERSON)
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": ASK}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 0, "messages": ASK}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5, "messages": "hi"}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
         "messages.[0].role"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [
                {"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages.[0].content",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": ASK, "temperature": 1.5}, "temperature"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]},
            "messages.[0].content.[0].tool_use_id",
        ),
        (
            {"model": MODEL, "max_tokens": 5, "messages": ASK, "tools": [WEATHER],
             "tool_choice": {"type": "tool", "name": "other"}},
            "tool_choice.name",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": ASK, "tool_choice": {"type": "any"}},
         "tool_choice.type"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": ASK,
             "tools": [{"name": "x", "input_schema": {"type": 7}}]},
            "tools.[0].input_schema",
        ),
        ({"model": MODEL, "max_tokens": 10**6, "messages": ASK}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5, "messages": ASK, "thinking": {"type": "enabled",
          "budget_tokens": 1024}}, "thinking"),
    ],
)  # fmt: skip
async def test_bad_input_gets_anthropics_400(
    gateway: InProcess, body: dict[str, Any], param: str
) -> None:
    resp = await gateway.http.post("/v1/messages", json=body)
    check_error(resp, 400, "invalid_request_error")
    message = resp.json()["error"]["message"]
    assert message.startswith(f"{param}: "), message


async def test_errors_are_the_sdk_error_classes(gateway: InProcess) -> None:
    async with sdk(gateway) as client:
        await _sdk_errors(client)
    await _http_errors(gateway)


async def _sdk_errors(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        # the SDK's create() checks for max_tokens itself: its generic post() does not
        await client.post("/v1/messages", body={"model": MODEL, "messages": ASK}, cast_to=Message)
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="no-such", max_tokens=5, messages=ASK)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="no-such", messages=ASK)  # type: ignore[arg-type]


async def _http_errors(gateway: InProcess) -> None:
    not_json = await gateway.http.post(
        "/v1/messages", content=b"{nope", headers={"content-type": "application/json"}
    )
    check_error(not_json, 400, "invalid_request_error")
    check_error(await gateway.http.post("/v1/messages/nothing", json={}), 404, "not_found_error")
    check_error(await gateway.http.get("/v1/messages"), 405, "invalid_request_error")
    # the OpenAI routes keep OpenAI's envelope
    assert "error" in (await gateway.http.post("/v1/chat/completions", json={})).json()


# ---- authentication, limits, usage, audit (scripted engine, authentication on) ---------


async def test_keys_limits_usage_and_audit(tmp_path: Path) -> None:
    async with secured(tmp_path, server={"max_body_bytes": 4096}) as g:
        key = await new_key(g, rpm=3)
        body = {"model": "scripted", "max_tokens": 20, "messages": ASK}
        async with sdk(g, key) as client:
            by_x_api_key = await client.messages.create(**body)  # type: ignore[arg-type]
        assert by_x_api_key.content[0].type == "text"
        assert by_x_api_key.content[0].text == "The answer is forty-two."
        by_bearer = await g.http.post(
            "/v1/messages", json=body,
            headers={"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01",
                     "anthropic-beta": "whatever"},
        )  # fmt: skip
        assert by_bearer.status_code == 200, by_bearer.text
        assert by_bearer.headers["x-ratelimit-remaining-requests"] == "1"
        request_id = by_bearer.headers["x-request-id"]
        streamed = await g.http.post(
            "/v1/messages", json={**body, "stream": True}, headers={"x-api-key": key}
        )
        assert streamed.status_code == 200
        with pytest.raises(anthropic.RateLimitError) as limited:
            async with sdk(g, key) as client:
                await client.messages.create(**body)  # type: ignore[arg-type]
        refused = limited.value.response
        check_error(refused, 429, "rate_limit_error")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"

        with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
            async with sdk(g, "sk-qg-wrong") as client:
                await client.messages.create(**body)  # type: ignore[arg-type]
        check_error(unauthenticated.value.response, 401, "authentication_error")
        check_error(await g.http.post("/v1/messages", json=body), 401, "authentication_error")
        plain = await new_key(g)  # x-api-key works on the OpenAI routes too
        chat = {"model": "scripted", "messages": ASK}
        for path, payload in (("/v1/chat/completions", chat), ("/v1/messages", body)):
            ok = await g.http.post(path, json=payload, headers={"x-api-key": plain})
            assert ok.status_code == 200, ok.text
        assert (await g.http.get("/v1/models", headers={"x-api-key": plain})).status_code == 200
        narrow = await new_key(g, models=["other"])
        async with sdk(g, narrow) as client:
            with pytest.raises(anthropic.PermissionDeniedError):
                await client.messages.create(**body)  # type: ignore[arg-type]
            with pytest.raises(anthropic.PermissionDeniedError):
                await client.messages.count_tokens(model="scripted", messages=ASK)  # type: ignore[arg-type]
        big = {**body, "messages": [{"role": "user", "content": "x" * 5000}]}
        too_large = await g.http.post("/v1/messages", json=big, headers={"x-api-key": key})
        check_error(too_large, 413, "request_too_large")

        await g.container.store.writer.flush()
        async with g.container.store.db.sessions() as session:
            entries = list(await session.scalars(select(UsageRow)))
        mine = [
            e
            for e in entries
            if e.path == "/v1/messages" and e.status == 200 and e.key_id is not None
        ]
        assert len(mine) == 4
        assert all(e.model == "scripted" and e.completion_tokens > 0 for e in mine)
        assert all(e.prompt_tokens > 0 and e.principal.startswith("key:") for e in mine)
        assert request_id in {e.request_id for e in mine}
        assert any(e.path == "/v1/messages" and e.status == 429 for e in entries)
        failures = await g.container.store.audit.recent(100, "auth.failure")
        assert any((f["details"] or {}).get("path") == "/v1/messages" for f in failures)
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        report = await g.http.get("/admin/usage?group_by=key,model", headers=admin)
        assert any(r["model"] == "scripted" and r["requests"] >= 3 for r in report.json()["data"])


@asynccontextmanager
async def flaky_gateway(tmp_path: Path) -> AsyncIterator[tuple[InProcess, FlakyEngine]]:
    engine = FlakyEngine(scripted_engine("scripted", ["one two three four five six"]))
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with open_in_process(Container(settings, engines={"scripted": engine})) as g:
        yield g, engine


async def test_failures_before_and_after_the_first_token(tmp_path: Path) -> None:
    async with flaky_gateway(tmp_path) as (g, engine):
        body = {"model": "scripted", "max_tokens": 20, "messages": ASK, "stream": True}
        engine.broken = True
        before = await g.http.post("/v1/messages", json=body)
        check_error(before, 503, "overloaded_error")
        engine.broken = False
        engine.fail_after = 2
        async with g.http.stream("POST", "/v1/messages", json=body) as resp:
            assert resp.status_code == 200
            events = parse_sse((await resp.aread()).decode())
        assert events[0]["type"] == "message_start"
        assert events[-1] == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "injected fault: replica down"},
        }
        with pytest.raises(anthropic.APIStatusError):
            async with (
                sdk(g) as client,
                client.messages.stream(model="scripted", max_tokens=20, messages=ASK) as stream,  # type: ignore[arg-type]
            ):
                async for _ in stream:
                    pass


async def test_stop_sequences_end_the_text(gateway: InProcess) -> None:
    """Greedy output without a stop sequence, then with a piece of that output as one: the
    text ends right before the piece."""
    greedy = {"temperature": 0.0}
    async with sdk(gateway) as client:
        free = await client.messages.create(
            model=MODEL,
            max_tokens=24,
            messages=ASK,
            extra_body=greedy,  # type: ignore[arg-type]
        )
        text = "".join(b.text for b in free.content if b.type == "text")
        assert len(text) > 12, text
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        stopped = await client.messages.create(
            model=MODEL, max_tokens=24, messages=ASK,  # type: ignore[arg-type]
            stop_sequences=["never-seen-xyz", stop], extra_body=greedy,
        )  # fmt: skip
    cut = "".join(b.text for b in stopped.content if b.type == "text")
    assert cut == text[: text.index(stop)]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    body = {"model": MODEL, "max_tokens": 24, "messages": ASK, "stream": True,
            "stop_sequences": [stop], "temperature": 0.0}  # fmt: skip
    async with gateway.http.stream("POST", "/v1/messages", json=body) as resp:
        events = parse_sse((await resp.aread()).decode())
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}


async def test_tool_input_keeps_integers_beyond_64_bits(tmp_path: Path) -> None:
    huge = 123456789012345678901234567890
    call = f'<tool_call>\n{{"name": "add", "arguments": {{"a": {huge}, "b": 1}}}}\n</tool_call>'
    engine = scripted_engine("scripted", [call])
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with open_in_process(Container(settings, engines={"scripted": engine})) as g:
        body = {"model": "scripted", "max_tokens": 60, "messages": ASK, "tools": [ADD]}
        resp = await g.http.post("/v1/messages", json=body)
    assert resp.status_code == 200, resp.text
    message = Message.model_validate(resp.json(), strict=True)
    assert message.stop_reason == "tool_use"
    assert [b.input for b in message.content if b.type == "tool_use"] == [{"a": huge, "b": 1}]


@pytest.mark.parametrize("arguments", ["{oops", "[1]"])
async def test_tool_arguments_that_are_not_an_object_are_a_502_not_a_500(
    tmp_path: Path, arguments: str
) -> None:
    """An upstream's model may write any arguments (faked by mangling a scripted call)."""
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    engine = FlakyEngine(scripted_engine("scripted", [call]))

    def mangle(event: Any) -> Any:
        return replace(event, arguments=arguments) if isinstance(event, ToolCallDelta) else event

    engine.mangle = mangle
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with open_in_process(Container(settings, engines={"scripted": engine})) as g:
        body = {"model": "scripted", "max_tokens": 60, "messages": ASK, "tools": [ADD]}
        resp = await g.http.post("/v1/messages", json=body)
        check_error(resp, 502, "api_error")
        async with g.http.stream("POST", "/v1/messages", json={**body, "stream": True}) as s:
            events = parse_sse((await s.aread()).decode())
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    assert not [e for e in events if e.get("content_block", {}).get("type") == "tool_use"]


# ---- a real server process: the sync SDK and LangChain ---------------------------------


def test_sync_sdk_and_langchain_against_a_server(server: Server) -> None:
    from langchain_anthropic import ChatAnthropic

    with anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0) as client:
        message = client.messages.create(model=MODEL, max_tokens=6, messages=ASK)  # type: ignore[arg-type]
        assert message.usage.output_tokens > 0
        with client.messages.stream(model=MODEL, max_tokens=6, messages=ASK) as stream:  # type: ignore[arg-type]
            final = stream.get_final_message()
        assert final.stop_reason in ("end_turn", "max_tokens")

    class Person(BaseModel):  # LangChain drops length and range keywords from the schema
        name: str
        age: int

    llm = ChatAnthropic(  # type: ignore[call-arg]
        base_url=server.base_url, api_key="unused", model=MODEL, max_tokens=60, max_retries=0
    )
    answer = llm.invoke("Hello there")
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    for method in ("json_schema", "function_calling"):
        structured = llm.with_structured_output(Person, method=method)  # type: ignore[arg-type]
        person = structured.invoke("Describe someone.")
        assert isinstance(person, Person), method
    chunks = list(llm.stream("Hello again"))
    assert chunks
    assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) > 0


def test_a_client_leaving_a_stream_aborts_the_generation(server: Server) -> None:
    def aborted() -> float:
        text = httpx.get(server.base_url + "/metrics").text
        return sample(text, "qwen_gateway_engine_aborted_requests_total", model=MODEL)

    before = aborted()
    body = {"model": MODEL, "max_tokens": 8000, "messages": ASK, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/messages", json=body) as resp:
        assert next(resp.iter_lines()) == "event: message_start"
    # the connection is closed: the engine must notice and free the slot
    for _ in range(500):
        if aborted() > before:
            break
        time.sleep(0.02)  # polling the server's counters, bounded
    assert aborted() == before + 1


MESSAGES_BODY: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 2,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris", "unit": "c"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21"}]},
    ],
    "tools": [WEATHER],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["END"],
    "metadata": {"user_id": "u"},
}  # fmt: skip
MESSAGES_PATHS = [
    "model", "max_tokens", "temperature", "top_p", "top_k", "stream", "stop_sequences",
    "stop_sequences.0", "metadata", "metadata.user_id", "system", "system.0", "system.0.text",
    "messages", "messages.0", "messages.0.role", "messages.0.content", "messages.0.content.0",
    "messages.0.content.0.type", "messages.0.content.0.text", "messages.1.content.0.id",
    "messages.1.content.0.name", "messages.1.content.0.input", "messages.2.content.0",
    "messages.2.content.0.tool_use_id", "messages.2.content.0.content",
    "messages.2.content.0.is_error", "tools", "tools.0", "tools.0.name", "tools.0.input_schema",
    "tools.0.type", "tool_choice", "tool_choice.type", "tool_choice.name",
    "tool_choice.disable_parallel_tool_use",
]  # fmt: skip


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(MESSAGES_PATHS), value=JSON_VALUES | st.just(_ABSENT))
async def test_any_value_in_any_messages_field_is_not_a_server_error(
    gateway: InProcess, path: str, value: Any
) -> None:
    """2xx or a 4xx in Anthropic's shape, never a 5xx; a normal request works afterwards."""
    small = isinstance(value, int) and not isinstance(value, bool) and value <= 4
    assume(path != "max_tokens" or small or not isinstance(value, int))
    for url in ("/v1/messages", "/v1/messages/count_tokens"):
        payload = _set(MESSAGES_BODY, path, value)
        resp = await gateway.http.post(
            url, content=json.dumps(payload), headers={"content-type": "application/json"}
        )
        assert resp.status_code < 500, (resp.status_code, resp.text[:500])
        if resp.status_code >= 400:
            check_error(resp, resp.status_code, "not_found_error" if resp.status_code == 404
                        else "invalid_request_error")  # fmt: skip
        elif url == "/v1/messages" and not payload.get("stream"):
            Message.model_validate(resp.json(), strict=True)
    after = await gateway.http.post("/v1/messages", json=MESSAGES_BODY)
    assert after.status_code == 200, after.text[:500]


async def test_messages_through_an_upstream_engine_match_the_upstream(
    server: Server, tmp_path: Path
) -> None:
    """A gateway relaying a second gateway (the openai engine; streamed answers come as relayed
    chunks) answers a Messages request as the second gateway does."""
    from qwen_gateway.engines.base import QUIET
    from qwen_gateway.engines.openai_upstream import PLUGIN, UpstreamConfig
    from qwen_gateway.engines.plugin import EngineContext

    body = {"model": MODEL, "max_tokens": 12, "messages": ASK, "temperature": 0.0}
    async with httpx.AsyncClient(base_url=server.base_url) as direct:
        expected = (await direct.post("/v1/messages", json=body)).json()
    config = UpstreamConfig(base_url=server.base_url + "/v1", model=MODEL)
    engine = await PLUGIN.create(config, EngineContext("relayed", observer=QUIET))
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with open_in_process(Container(settings, engines={"relayed": engine})) as g:  # type: ignore[dict-item]
        relayed = {**body, "model": "relayed"}
        got = (await g.http.post("/v1/messages", json=relayed)).json()
        Message.model_validate(got, strict=True)
        assert got["content"] == expected["content"] and got["model"] == "relayed"
        assert got["usage"] == expected["usage"]
        async with g.http.stream("POST", "/v1/messages", json={**relayed, "stream": True}) as r:
            events = parse_sse((await r.aread()).decode())
        check_order(events)
        assert events[0]["message"]["usage"]["input_tokens"] == expected["usage"]["input_tokens"]
        assert expected["usage"]["input_tokens"] > 0
        text = "".join(
            e["delta"]["text"]
            for e in events
            if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"
        )
        assert [{"type": "text", "text": text}] == expected["content"]
        assert events[-2]["usage"]["output_tokens"] == expected["usage"]["output_tokens"]
        counted = await g.http.post(
            "/v1/messages/count_tokens", json={"model": "relayed", "messages": ASK}
        )
        assert counted.json()["input_tokens"] == expected["usage"]["input_tokens"]
        forced = await g.http.post(
            "/v1/messages",
            json={**relayed, "max_tokens": 80, "tools": [ADD], "tool_choice": {"type": "any"}},
        )
        uses = [b for b in forced.json()["content"] if b["type"] == "tool_use"]
        assert uses and forced.json()["stop_reason"] == "tool_use"
        for use in uses:
            jsonschema.validate(use["input"], ADD["input_schema"])
