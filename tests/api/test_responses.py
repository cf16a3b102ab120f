"""The Responses API (/v1/responses) through the real pipeline, with the official SDK as the
oracle and every body and event checked against OpenAI's published schemas.

Exact model output comes from the scripted backend (engines/scripted.py) behind the real
prompt pipeline; constrained tool calls and JSON come from the real tiny-model engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_request_properties import _ABSENT, JSON_VALUES, _set

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.openai_upstream import PLUGIN as UPSTREAM
from qwen_gateway.engines.openai_upstream import UpstreamConfig
from qwen_gateway.engines.plugin import EngineContext
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.engines.scripted import ScriptedBackend
from store.helpers import proxied
from support.fixtures import MODEL, InProcess, open_in_process
from support.flaky import FlakyEngine
from support.server import Server, running_server
from support.spec import validate
from tenancy.helpers import admin_key, new_key

NAME = "scripted-qwen"
REPLY = "The answer is forty-two."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
    "strict": False,
}
ONE_CALL = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
)


@asynccontextmanager
async def scripted(
    tmp_path: Path, replies: list[str] | None = None, engine: Any = None, **tree: Any
) -> AsyncIterator[tuple[InProcess, ScriptedBackend]]:
    """An in-process gateway over the scripted backend (or over ``engine``, e.g. a
    FlakyEngine wrapping one, to inject faults)."""
    backend = ScriptedBackend(NAME, replies or [REPLY])
    settings = load_settings(
        {"data_dir": str(tmp_path), "auth": {"enabled": False}, **tree}, env={}
    )
    container = Container(settings, engines={NAME: engine or PromptEngine(backend)})
    async with open_in_process(container) as g:
        yield g, backend


def prompt_of(backend: ScriptedBackend) -> str:
    return backend.tokenizer.decode(backend.requests[-1])


def sse_events(raw: str) -> list[dict[str, Any]]:
    """Each frame's JSON, checked: an ``event:`` line naming its type, then its data."""
    events = []
    for block in raw.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        event = json.loads(lines[1][len("data: ") :])
        assert lines[0][len("event: ") :] == event["type"]
        events.append(event)
    return events


async def stream_raw(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = (await resp.aread()).decode()
    events = sse_events(raw)
    for event in events:
        validate("ResponseStreamEvent", event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# ---- create ---------------------------------------------------------------


async def test_string_input_gets_a_response_with_output_text(tmp_path: Path) -> None:
    async with scripted(tmp_path) as (g, backend):
        raw = await g.client.responses.with_raw_response.create(model=NAME, input="Hi there")
        body = json.loads(raw.text)
        validate("Response", body)
        response = raw.parse()
        assert response.id.startswith("resp_") and response.object == "response"
        assert response.status == "completed"
        assert response.output_text == REPLY
        assert response.output[0].type == "message"
        assert response.usage is not None
        assert response.usage.output_tokens > 0 and response.usage.input_tokens > 0
        assert response.usage.total_tokens == (
            response.usage.input_tokens + response.usage.output_tokens
        )
        assert body["store"] is False  # storage is off by default: nothing was kept
        assert "<|im_start|>user\nHi there<|im_end|>" in prompt_of(backend)


async def test_item_list_with_instructions_becomes_the_conversation(tmp_path: Path) -> None:
    async with scripted(tmp_path) as (g, backend):
        raw = await g.client.responses.with_raw_response.create(
            model=NAME,
            instructions="Answer in one word.",
            input=[
                {"role": "developer", "content": "Be kind."},
                {"role": "user", "content": [{"type": "input_text", "text": "What is 6x7?"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "42."}],
                },
                {"role": "user", "content": "And in words?"},
            ],
            temperature=0.0,
            top_p=0.5,
            max_output_tokens=64,
            metadata={"case": "items"},
            user="end-user-1",
        )
        validate("Response", json.loads(raw.text))
        response = raw.parse()
        assert response.output_text == REPLY
        assert response.instructions == "Answer in one word."
        assert response.metadata == {"case": "items"}
        prompt = prompt_of(backend)
        assert prompt.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>")
        assert "<|im_start|>assistant\n42.<|im_end|>" in prompt
        assert prompt.index("What is 6x7?") < prompt.index("And in words?")


async def test_stream_events_arrive_in_the_order_clients_parse(tmp_path: Path) -> None:
    async with scripted(tmp_path) as (g, _):
        events = await stream_raw(g.http, {"model": NAME, "input": "Hi"})
        types = [e["type"] for e in events]
        assert types[:5] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
        ]
        assert types[-4:] == [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert set(types[4:-4]) == {"response.output_text.delta"}
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert deltas == REPLY == events[-4]["text"]
        final = events[-1]["response"]
        validate("Response", final)
        assert final["status"] == "completed" and final["id"] == events[0]["response"]["id"]
        assert final["output"][0]["content"][0]["text"] == REPLY

        # the SDK's event iterator and its stream helper agree
        stream = await g.client.responses.create(model=NAME, input="Hi", stream=True)
        seen = [event.type async for event in stream]
        assert seen == types
        async with g.client.responses.stream(model=NAME, input="Hi") as helper:
            async for _ in helper:
                pass
            done = await helper.get_final_response()
        assert done.output_text == REPLY


async def test_function_call_then_its_output_round_trip(tmp_path: Path) -> None:
    async with scripted(tmp_path, [ONE_CALL, "It is 21 degrees."]) as (g, backend):
        raw = await g.client.responses.with_raw_response.create(
            model=NAME,
            input="Weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
        )
        validate("Response", json.loads(raw.text))
        first = raw.parse()
        kinds = [item.type for item in first.output]
        assert kinds == ["message", "function_call"]
        call = first.output[1]
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Paris", "unit": "c"}
        assert call.call_id.startswith("call_")
        assert '"name": "get_weather"' in prompt_of(backend)

        second = await g.client.responses.create(
            model=NAME,
            tools=[WEATHER],  # type: ignore[list-item]
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'},
            ],
        )
        assert second.output_text == "It is 21 degrees."
        prompt = prompt_of(backend)
        assert '<tool_response>\n{"temp": 21}\n</tool_response>' in prompt
        assert '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}' in prompt


async def test_streamed_function_call_events(tmp_path: Path) -> None:
    async with scripted(tmp_path, [ONE_CALL]) as (g, _):
        events = await stream_raw(g.http, {"model": NAME, "input": "Weather?", "tools": [WEATHER]})
        types = [e["type"] for e in events]
        call_start = types.index("response.function_call_arguments.delta") - 1
        assert types[call_start:] == [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        added, delta, done = events[call_start : call_start + 3]
        assert added["item"]["type"] == "function_call" and added["output_index"] == 1
        assert delta["item_id"] == added["item"]["id"] == done["item_id"]
        assert json.loads(done["arguments"]) == {"city": "Paris", "unit": "c"}
        assert [i["type"] for i in events[-1]["response"]["output"]] == [
            "message",
            "function_call",
        ]
        async with g.client.responses.stream(
            model=NAME,
            input="Weather?",
            tools=[WEATHER],  # type: ignore[list-item]
        ) as helper:
            final = await helper.get_final_response()
        assert [i.type for i in final.output] == ["message", "function_call"]


async def test_max_output_tokens_makes_the_response_incomplete(tmp_path: Path) -> None:
    long = "one two three four five six seven eight nine ten eleven twelve"
    async with scripted(tmp_path, [long]) as (g, _):
        raw = await g.client.responses.with_raw_response.create(
            model=NAME, input="Count", max_output_tokens=3
        )
        validate("Response", json.loads(raw.text))
        response = raw.parse()
        assert response.status == "incomplete"
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.usage is not None and response.usage.output_tokens == 3
        events = await stream_raw(g.http, {"model": NAME, "input": "Count", "max_output_tokens": 3})
        assert events[-1]["type"] == "response.incomplete"
        assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_a_failure_mid_stream_ends_with_error_and_response_failed(tmp_path: Path) -> None:
    flaky = FlakyEngine(PromptEngine(ScriptedBackend(NAME, [REPLY])))
    async with scripted(tmp_path, engine=flaky) as (g, _):
        flaky.fail_after = 3
        events = await stream_raw(g.http, {"model": NAME, "input": "Hi"})
        types = [e["type"] for e in events]
        assert types[:2] == ["response.created", "response.in_progress"]
        assert types[-2:] == ["error", "response.failed"]
        failed = events[-1]["response"]
        validate("Response", failed)
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert events[-2]["message"] == failed["error"]["message"]

        flaky.fail_after = None
        flaky.broken = True  # before the first event: a proper status, in OpenAI's envelope
        for stream in (False, True):
            resp = await g.http.post(
                "/v1/responses", json={"model": NAME, "input": "Hi", "stream": stream}
            )
            assert resp.status_code == 503
            assert resp.json()["error"]["type"] == "server_error"


async def test_the_response_cache_serves_a_repeated_responses_request(tmp_path: Path) -> None:
    async with scripted(tmp_path, ["first answer", "second answer"], cache={}) as (g, _):
        body = {"model": NAME, "input": "Same question", "temperature": 0}
        first = await g.http.post("/v1/responses", json=body)
        again = await g.http.post("/v1/responses", json=body)
        assert first.headers["x-qwen-gateway-cache"] == "miss"
        assert again.headers["x-qwen-gateway-cache"] == "hit"
        texts = [r.json()["output"][0]["content"][0]["text"] for r in (first, again)]
        assert texts == ["first answer", "first answer"]
        assert first.json()["id"] != again.json()["id"]
        validate("Response", again.json())
        huge = {"type": "function", "name": "f", "parameters": {"type": "object",
                "properties": {"n": {"type": "integer", "maximum": 10**30}}}}  # fmt: skip
        for _ in range(2):  # a schema orjson cannot encode is keyed all the same
            keyed = await g.http.post("/v1/responses", json={**body, "tools": [huge]})
            assert keyed.status_code == 200, keyed.text
        assert keyed.headers["x-qwen-gateway-cache"] == "hit"


async def test_content_safety_applies_to_responses(tmp_path: Path) -> None:
    safety = {
        "rule_sets": {"x": {"keywords": {"pets": ["hamster"], "secret": ["project bluebird"]}}},
        "policies": [{"name": "a", "rule_sets": ["x"],
                      "actions": {"pets": "redact", "secret": "block"}}],
    }  # fmt: skip
    async with scripted(tmp_path, ["a gerbil and a hamster"], safety=safety) as (g, _):
        response = await g.client.responses.create(model=NAME, input="Pets?")
        assert response.output_text == "a gerbil and a *******"
        events = await stream_raw(g.http, {"model": NAME, "input": "Pets?"})
        streamed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert streamed == "a gerbil and a *******"
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == streamed
        with pytest.raises(openai.BadRequestError) as blocked:
            await g.client.responses.create(model=NAME, input="Tell me about project bluebird")
        assert blocked.value.code == "content_filter"


RESPONSES_BODY: dict[str, Any] = {
    "model": NAME,
    "instructions": "Be brief.",
    "input": [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "21"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "21 C"}]},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [WEATHER],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "parallel_tool_calls": False,
    "text": {"format": {"type": "text"}},
    "max_output_tokens": 50,
    "temperature": 0.5,
    "top_p": 1,
    "metadata": {"k": "v"},
    "store": False,
    "truncation": "disabled",
    "user": "u",
}  # fmt: skip
RESPONSES_PATHS = [
    "model", "instructions", "input", "input.0", "input.0.type", "input.0.role",
    "input.0.content", "input.0.content.0", "input.0.content.0.type", "input.0.content.0.text",
    "input.1", "input.1.type", "input.1.call_id", "input.1.name", "input.1.arguments",
    "input.2", "input.2.type", "input.2.call_id", "input.2.output", "input.3.role",
    "input.3.content", "input.3.content.0.type", "input.3.content.0.text", "input.4.role",
    "input.4.content", "tools", "tools.0", "tools.0.type", "tools.0.name", "tools.0.description",
    "tools.0.parameters", "tools.0.parameters.type", "tools.0.parameters.properties",
    "tools.0.parameters.required", "tools.0.strict", "tool_choice", "tool_choice.type",
    "tool_choice.name", "parallel_tool_calls", "text", "text.format", "text.format.type",
    "text.format.name", "text.format.schema", "text.format.strict", "max_output_tokens",
    "temperature", "top_p", "metadata", "metadata.k", "store", "truncation", "user", "stream",
    "previous_response_id", "reasoning", "include",
]  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def plain(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    """A scripted gateway shared by the module's property test; it calls get_weather."""
    async with scripted(tmp_path_factory.mktemp("responses"), [ONE_CALL]) as (g, _):
        yield g


async def test_the_property_tests_base_body_is_answered(plain: InProcess) -> None:
    for stream in (False, True):
        resp = await plain.http.post("/v1/responses", json={**RESPONSES_BODY, "stream": stream})
        assert resp.status_code == 200, resp.text


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(RESPONSES_PATHS), value=JSON_VALUES | st.just(_ABSENT))
async def test_any_value_in_any_responses_field_is_not_a_server_error(
    plain: InProcess, path: str, value: Any
) -> None:
    """A valid body with one field changed: a response or a 4xx in OpenAI's envelope, never a
    5xx, except a 502 when the scripted call no longer fits an output format asked for."""
    small = isinstance(value, int) and not isinstance(value, bool) and value <= 1000
    assume(path != "max_output_tokens" or small or not isinstance(value, int))
    payload = _set(RESPONSES_BODY, path, value)
    resp = await plain.http.post(
        "/v1/responses", content=json.dumps(payload), headers={"content-type": "application/json"}
    )
    if resp.status_code == 502:
        assert resp.json()["error"]["code"] == "invalid_model_output", resp.text
        return
    assert resp.status_code < 500, (payload, resp.text[:500])
    if resp.status_code >= 400:
        validate("ErrorResponse", resp.json())


# ---- the tiny model: constrained decoding --------------------------------------

ADD = {
    "type": "function",
    "name": "add",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
    "strict": True,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "add"}])
async def test_forced_tool_choice_yields_a_valid_function_call(
    gateway: InProcess, choice: Any
) -> None:
    raw = await gateway.client.responses.with_raw_response.create(
        model=MODEL, input="Add 2 and 3.", tools=[WEATHER, ADD],  # type: ignore[list-item]
        tool_choice=choice, max_output_tokens=60, parallel_tool_calls=False,
    )  # fmt: skip
    validate("Response", json.loads(raw.text))
    response = raw.parse()
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name in ({"add"} if isinstance(choice, dict) else {"add", "get_weather"})
    schema = ADD["parameters"] if call.name == "add" else WEATHER["parameters"]
    jsonschema.validate(json.loads(call.arguments), schema)


async def test_json_schema_format_output_validates(gateway: InProcess) -> None:
    response = await gateway.client.responses.create(
        model=MODEL,
        input="Describe a person.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
        },
        max_output_tokens=80,
    )
    jsonschema.validate(json.loads(response.output_text), PERSON)
    json_object = await gateway.client.responses.create(
        model=MODEL, input="JSON please.", text={"format": {"type": "json_object"}},
        max_output_tokens=60,
    )  # fmt: skip
    assert isinstance(json.loads(json_object.output_text), dict)


# ---- storage off (the default) ---------------------------------------------------


async def test_storage_off_refuses_store_and_previous_response_id(tmp_path: Path) -> None:
    async with scripted(tmp_path) as (g, _):
        with pytest.raises(openai.BadRequestError) as refused:
            await g.client.responses.create(model=NAME, input="Hi", store=True)
        assert refused.value.param == "store"
        assert "responses.store" in refused.value.message
        with pytest.raises(openai.BadRequestError) as chained:
            await g.client.responses.create(model=NAME, input="Hi", previous_response_id="resp_x")
        assert chained.value.param == "previous_response_id"
        assert "responses.store" in chained.value.message
        kept = await g.client.responses.create(model=NAME, input="Hi", store=False)
        assert kept.store is False
        for call in (
            g.client.responses.retrieve(kept.id),
            g.client.responses.delete(kept.id),
            g.client.responses.input_items.list(kept.id),
            g.client.responses.cancel(kept.id),
        ):
            with pytest.raises(openai.NotFoundError) as missing:
                await call
            assert "responses.store" in missing.value.message


async def test_under_a_root_path_the_framework_route_answers_the_same(tmp_path: Path) -> None:
    """The hot route serves POST /v1/responses except under a root path, where the FastAPI
    route does: JSON and the stream alike."""
    async with scripted(tmp_path) as (g, _):
        transport = httpx.ASGITransport(app=g.app, root_path="/gw")
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            resp = await http.post("/gw/v1/responses", json={"model": NAME, "input": "Hi"})
            assert resp.status_code == 200, resp.text
            validate("Response", resp.json())
            assert resp.json()["output"][0]["content"][0]["text"] == REPLY
            body = {"model": NAME, "input": "Hi", "stream": True}
            async with http.stream("POST", "/gw/v1/responses", json=body) as streamed:
                assert streamed.status_code == 200
                events = sse_events((await streamed.aread()).decode())
    assert events[-1]["type"] == "response.completed"


async def test_a_bad_query_parameter_is_named_as_sent(tmp_path: Path) -> None:
    async with scripted(tmp_path) as (g, _):
        resp = await g.http.get("/v1/responses/resp_x/input_items?limit=abc")
    assert resp.status_code == 400, resp.text
    validate("ErrorResponse", resp.json())
    assert resp.json()["error"]["param"] == "limit"


# ---- bad input -------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {"input": "x"}, "model"),
    ("no input", {"model": NAME}, "input"),
    ("input a number", {"model": NAME, "input": 3}, "input"),
    ("item not an object", {"model": NAME, "input": ["x"]}, "input.[0]"),
    ("unknown role", {"model": NAME, "input": [{"role": "robot", "content": "x"}]},
     "input.[0].role"),
    ("role a list", {"model": NAME, "input": [{"type": "message", "role": ["user"],
     "content": "x"}]}, "input.[0].role"),
    ("role an object", {"model": NAME, "input": [{"role": {"a": 1}, "content": "x"}]},
     "input.[0].role"),
    ("tool_choice name a list", {"model": NAME, "input": "x", "tools": [WEATHER],
     "tool_choice": {"type": "function", "name": ["x"]}}, "tool_choice.name"),
    ("image part", {"model": NAME, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://x"}]}]}, "input.[0].content.[0].type"),
    ("built-in item", {"model": NAME, "input": [{"type": "web_search_call", "id": "ws"}]},
     "input.[0].type"),
    ("output with no call", {"model": NAME, "input": [
        {"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
     "input.[0].call_id"),
    ("call without name", {"model": NAME, "input": [
        {"type": "function_call", "call_id": "c", "arguments": "{}"}]}, "input.[0].name"),
    ("call arguments not JSON", {"model": NAME, "input": [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]},
     "input.[0].arguments"),
    ("built-in tool", {"model": NAME, "input": "x", "tools": [{"type": "web_search"}]},
     "tools.[0].type"),
    ("tool name with a space", {"model": NAME, "input": "x",
     "tools": [{"type": "function", "name": "get weather"}]}, "tools.[0].name"),
    ("duplicate tools", {"model": NAME, "input": "x", "tools": [WEATHER, WEATHER]},
     "tools.[1].name"),
    ("parameters not a schema", {"model": NAME, "input": "x", "tools": [
        {"type": "function", "name": "f", "parameters": {"type": "objekt"}}]},
     "tools.[0].parameters"),
    ("tool_choice names no tool", {"model": NAME, "input": "x", "tools": [WEATHER],
     "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    ("tool_choice required without tools", {"model": NAME, "input": "x",
     "tool_choice": "required"}, "tool_choice"),
    ("tool_choice of a built-in", {"model": NAME, "input": "x",
     "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ("unknown format", {"model": NAME, "input": "x", "text": {"format": {"type": "yaml"}}},
     "text.format.type"),
    ("json_schema without schema", {"model": NAME, "input": "x",
     "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema"),
    ("json_schema without name", {"model": NAME, "input": "x",
     "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     "text.format.name"),
    ("max_output_tokens too large", {"model": NAME, "input": "x",
     "max_output_tokens": 10**6}, "max_output_tokens"),
    ("max_output_tokens zero", {"model": NAME, "input": "x", "max_output_tokens": 0},
     "max_output_tokens"),
    ("temperature too high", {"model": NAME, "input": "x", "temperature": 3}, "temperature"),
    ("background", {"model": NAME, "input": "x", "background": True}, "background"),
    ("reasoning", {"model": NAME, "input": "x", "reasoning": {"effort": "low"}}, "reasoning"),
    ("include", {"model": NAME, "input": "x", "include": ["message.output_text.logprobs"]},
     "include"),
    ("truncation auto", {"model": NAME, "input": "x", "truncation": "auto"}, "truncation"),
    ("verbosity", {"model": NAME, "input": "x", "text": {"verbosity": "low"}},
     "text.verbosity"),
    ("unknown parameter", {"model": NAME, "input": "x", "frobnicate": 1}, "frobnicate"),
    ("too much metadata", {"model": NAME, "input": "x",
     "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ("unknown model", {"model": "nope", "input": "x"}, "model"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD], ids=[n for n, _, _ in BAD])
async def test_bad_input_answers_the_openai_error_shape(
    tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    async with scripted(tmp_path) as (g, _):
        for stream in (False, True):
            resp = await g.http.post("/v1/responses", json={**body, "stream": stream})
            assert 400 <= resp.status_code < 500, resp.text
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
            assert error["param"] == param, error
        not_json = await g.http.post(
            "/v1/responses", content=b"{", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400 and "error" in not_json.json()


# ---- storage on ----------------------------------------------------------------


def keyed(g: InProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=key, http_client=g.http, max_retries=0
    )


async def test_stored_responses_are_the_callers_own_and_chain(
    tmp_path: Path, database_url: str
) -> None:
    tree = {"auth": {"enabled": True}, "database": {"url": database_url},
            "responses": {"store": True}}  # fmt: skip
    async with scripted(tmp_path, **tree) as (g, backend):
        a, b = keyed(g, await new_key(g)), keyed(g, await new_key(g))
        first = await a.responses.create(model=NAME, input="What is 6x7?")
        assert first.store is True  # the SDK omits store: stored, as OpenAI does

        got = await a.responses.with_raw_response.retrieve(first.id)
        validate("Response", json.loads(got.text))
        assert got.parse().output_text == REPLY
        items = await a.responses.input_items.with_raw_response.list(first.id)
        validate("ResponseItemList", json.loads(items.text))
        listed = items.parse()
        assert [i.type for i in listed.data] == ["message"]
        assert listed.data[0].content[0].text == "What is 6x7?"  # type: ignore[union-attr]

        # another key sees nothing of it
        for call in (
            b.responses.retrieve(first.id),
            b.responses.delete(first.id),
            b.responses.input_items.list(first.id),
            b.responses.cancel(first.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
        with pytest.raises(openai.BadRequestError) as foreign:
            await b.responses.create(model=NAME, input="Go on", previous_response_id=first.id)
        assert foreign.value.param == "previous_response_id"

        # previous_response_id brings the conversation back, two turns deep
        second = await a.responses.create(
            model=NAME, input="And in words?", previous_response_id=first.id,
            instructions="Be brief.",
        )  # fmt: skip
        assert second.previous_response_id == first.id
        third = await a.responses.create(
            model=NAME, input="Thanks!", previous_response_id=second.id
        )
        prompt = prompt_of(backend)
        assert "Be brief." not in prompt  # instructions are not carried over
        turns = [("user", "What is 6x7?"), ("assistant", REPLY), ("user", "And in words?"),
                 ("assistant", REPLY), ("user", "Thanks!")]  # fmt: skip
        assert "\n".join(f"<|im_start|>{r}\n{t}<|im_end|>" for r, t in turns) in prompt
        assert third.output_text == REPLY

        # a streamed response is stored too; store=false is not
        async with a.responses.stream(model=NAME, input="Stream it") as stream:
            streamed = await stream.get_final_response()
        assert (await a.responses.retrieve(streamed.id)).output_text == REPLY
        unkept = await a.responses.create(model=NAME, input="Hi", store=False)
        assert unkept.store is False
        with pytest.raises(openai.NotFoundError):
            await a.responses.retrieve(unkept.id)

        for path, param in (
            (f"/v1/responses/{first.id}?stream=true", "stream"),
            (f"/v1/responses/{first.id}/input_items?include[]=x", "include"),
        ):
            unsupported = await g.http.get(path, headers={"Authorization": f"Bearer {a.api_key}"})
            assert unsupported.status_code == 400
            assert unsupported.json()["error"]["param"] == param

        # cancel: only background responses can be, and there are none here
        with pytest.raises(openai.BadRequestError) as cancel:
            await a.responses.cancel(first.id)
        assert cancel.value.code == "not_cancellable"

        deleted = await a.responses.delete(first.id)
        assert deleted is None  # the SDK returns nothing for a 200 delete
        with pytest.raises(openai.NotFoundError):
            await a.responses.retrieve(first.id)
        # the follow-ups keep their own copy of the conversation
        assert (await a.responses.retrieve(third.id)).previous_response_id == second.id


async def test_limits_usage_and_audit_see_responses_requests(tmp_path: Path) -> None:
    from sqlalchemy import select

    from qwen_gateway.store.tables import AuditRow, UsageRow

    async with scripted(tmp_path, auth={"enabled": True}) as (g, _):
        admin = {"Authorization": f"Bearer {await admin_key(g)}"}
        made = await g.http.post("/admin/keys", json={"name": "one-a-minute", "rpm": 1},
                                 headers=admin)  # fmt: skip
        client = keyed(g, made.json()["key"])
        ok = await client.responses.with_raw_response.create(model=NAME, input="Hi")
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model=NAME, input="Hi again")
        stranger = keyed(g, "sk-not-a-key")
        with pytest.raises(openai.AuthenticationError):
            await stranger.responses.create(model=NAME, input="Hi")
        await g.container.store.writer.flush()
        async with g.container.store.db.sessions() as session:
            rows = list(await session.scalars(
                select(UsageRow).where(UsageRow.path == "/v1/responses")
            ))  # fmt: skip
            audit = list(await session.scalars(select(AuditRow)))
        served = [r for r in rows if r.request_id == ok.headers["x-request-id"]]
        assert len(served) == 1 and served[0].status == 200
        assert served[0].prompt_tokens > 0 and served[0].completion_tokens > 0
        assert served[0].principal.startswith("key:") and served[0].model == NAME
        assert sorted(r.status for r in rows) == [200, 401, 429]
        failures = [e for e in audit if e.action == "auth.failure"]
        assert [(e.details or {}).get("path") for e in failures] == ["/v1/responses"]


async def test_langchain_chatopenai_with_the_responses_api(tmp_path: Path) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    replies = [REPLY, REPLY, ONE_CALL, "It is 21 degrees."]
    async with scripted(tmp_path, replies) as (g, backend):
        llm = ChatOpenAI(
            model=NAME,
            base_url="http://gateway/v1",
            api_key="unused",  # type: ignore[arg-type]
            http_async_client=g.http,
            max_retries=0,
            use_responses_api=True,
        )
        message = await llm.ainvoke("Hi from LangChain")
        assert message.text == REPLY
        assert "Hi from LangChain" in prompt_of(backend)
        merged: Any = None
        async for chunk in llm.astream("Stream please"):
            merged = chunk if merged is None else merged + chunk
        assert merged.text == REPLY

        tool = {"type": "function", "function": {"name": "get_weather",
                                                 "parameters": WEATHER["parameters"]}}  # fmt: skip
        tooled = llm.bind_tools([tool])
        ask = HumanMessage("Weather in Paris?")
        called: Any = await tooled.ainvoke([ask])
        (call,) = called.tool_calls
        assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris", "unit": "c"})
        answer = await tooled.ainvoke(
            [ask, called, ToolMessage('{"temp": 21}', tool_call_id=call["id"])]
        )
        assert answer.text == "It is 21 degrees."
        assert '<tool_response>\n{"temp": 21}\n</tool_response>' in prompt_of(backend)


# ---- a real server process ------------------------------------------------------


async def test_through_the_upstream_engine_against_a_second_gateway(
    server: Server, tmp_path: Path
) -> None:
    """A gateway whose deployment relays ``server`` (a second gateway on the tiny model) with
    the openai engine: the same answer as asking that gateway directly, streamed and not."""
    async with openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key="x", max_retries=0
    ) as direct:
        expected = await direct.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=12,
            temperature=0,
        )  # fmt: skip
    config = UpstreamConfig(base_url=server.base_url + "/v1", model=MODEL)
    engine = await UPSTREAM.create(config, EngineContext("relayed"))
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    async with open_in_process(Container(settings, engines={"relayed": engine})) as g:
        args: dict[str, Any] = {"model": "relayed", "input": "Hello", "max_output_tokens": 12,
                                "temperature": 0}  # fmt: skip
        raw = await g.client.responses.with_raw_response.create(**args)
        validate("Response", json.loads(raw.text))
        got = raw.parse()
        assert got.model == "relayed"
        assert got.output_text == expected.choices[0].message.content
        assert got.usage is not None and expected.usage is not None
        assert got.usage.input_tokens == expected.usage.prompt_tokens
        assert got.usage.output_tokens == expected.usage.completion_tokens
        events = await stream_raw(g.http, args)
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == expected.choices[0].message.content
        assert events[-1]["response"]["usage"]["output_tokens"] == expected.usage.completion_tokens
        forced = await g.client.responses.create(
            model="relayed", input="Add.", tools=[ADD], tool_choice="required",  # type: ignore[list-item]
            max_output_tokens=80,
        )  # fmt: skip
        call = next(item for item in forced.output if item.type == "function_call")
        assert call.name == "add"
        jsonschema.validate(json.loads(call.arguments), ADD["parameters"])
        huge = {"type": "function", "name": "f", "parameters": {"type": "object",
                "properties": {"n": {"type": "integer", "maximum": 10**30}}}}  # fmt: skip
        relayed = await g.http.post("/v1/responses", json={**args, "tools": [huge]})
        assert relayed.status_code == 200, relayed.text  # relayed with an exact encoder


def test_real_server_with_the_sync_sdk(server: Server) -> None:
    with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused") as client:
        response = client.responses.create(model=MODEL, input="Hello", max_output_tokens=8)
        assert response.status in ("completed", "incomplete")
        assert isinstance(response.output_text, str)
        with client.responses.stream(model=MODEL, input="Hello", max_output_tokens=8) as stream:
            events = list(stream)
        types = [event.type for event in events]
        assert types[:2] == ["response.created", "response.in_progress"]
        assert types[-1] in ("response.completed", "response.incomplete")
        assert events[-1].response.id == events[0].response.id  # type: ignore[union-attr]
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=MODEL, input="Hello", store=True)
        assert refused.value.param == "store"


def test_real_server_with_storage_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"QWEN_GATEWAY_RESPONSES__STORE": "true"}
    with (
        running_server(tiny_model_dir, tmp_path / "server.log", env=env) as live,
        openai.OpenAI(base_url=live.base_url + "/v1", api_key="unused") as client,
    ):
        first = client.responses.create(model=MODEL, input="Hello", max_output_tokens=8)
        assert client.responses.retrieve(first.id).output_text == first.output_text
        follow = client.responses.create(
            model=MODEL, input="More", previous_response_id=first.id, max_output_tokens=8
        )
        assert follow.usage is not None and first.usage is not None
        assert follow.usage.input_tokens > first.usage.input_tokens  # the history came along
        items = client.responses.input_items.list(follow.id)
        assert [i.content[0].text for i in items.data] == ["More"]  # type: ignore[union-attr]
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)


async def test_integers_beyond_64_bits_in_a_schema_are_echoed_and_stored(
    tmp_path: Path, database_url: str
) -> None:
    """orjson refuses integers beyond 64 bits: the JSON answer, the stream's events and the
    store fall back to an exact encoder instead of failing."""
    huge = 10**30
    tool = {"type": "function", "name": "f", "parameters": {"type": "object",
            "properties": {"n": {"type": "integer", "maximum": huge}}}}  # fmt: skip
    fmt = {"type": "json_schema", "name": "n", "schema": tool["parameters"]}
    tree = {"database": {"url": database_url}, "responses": {"store": True}}
    async with scripted(tmp_path, ['{"n": 7}'], **tree) as (g, _):
        for body in ({"model": NAME, "input": "x", "tools": [tool]},
                     {"model": NAME, "input": "x", "text": {"format": fmt}}):  # fmt: skip
            resp = await g.http.post("/v1/responses", json=body)
            assert resp.status_code == 200, resp.text
            validate("Response", resp.json())
            events = await stream_raw(g.http, body)
            assert events[-1]["type"] == "response.completed"
            for answer in (resp.json(), events[-1]["response"]):
                got = await g.http.get(f"/v1/responses/{answer['id']}")
                assert got.status_code == 200, got.text
                for echoed in (answer, got.json()):
                    if "tools" in body:
                        assert (
                            echoed["tools"][0]["parameters"]["properties"]["n"]["maximum"] == huge
                        )
                    else:
                        schema = echoed["text"]["format"]["schema"]
                        assert schema["properties"]["n"]["maximum"] == huge


async def test_an_unreachable_store_is_a_503_or_response_failed(
    tmp_path: Path, postgres_url: str
) -> None:
    with proxied(postgres_url) as (proxy, url):
        tree = {"database": {"url": url}, "responses": {"store": True}}
        async with scripted(tmp_path, **tree) as (g, _):
            kept = await g.client.responses.create(model=NAME, input="Hi")
            proxy.down()
            with pytest.raises(openai.InternalServerError) as down:
                await g.client.responses.create(model=NAME, input="Hi")
            assert down.value.status_code == 503 and down.value.code == "storage_unavailable"
            with pytest.raises(openai.InternalServerError):
                await g.client.responses.retrieve(kept.id)
            events = await stream_raw(g.http, {"model": NAME, "input": "Hi"})
            assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
            assert events[-2]["code"] == "storage_unavailable"
            proxy.up()
            assert (await g.client.responses.retrieve(kept.id)).output_text == REPLY
