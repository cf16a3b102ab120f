"""Function calling through the real pipeline: template, parser, response shaping, clients.

The model output here comes from the scripted backend (engines/scripted.py): a random-weight
model cannot decide to call a tool on purpose. Forced calls on the real engine are tested in
tests/engines/test_constrained_api.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from qwen_gateway.config import load_settings
from qwen_gateway.container import Container
from qwen_gateway.engines.prompt import PromptEngine
from qwen_gateway.engines.scripted import ScriptedBackend
from support.fixtures import InProcess, open_in_process
from support.spec import validate

NAME = "scripted-qwen"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ONE_CALL = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
)
TWO_CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "巴黎"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@asynccontextmanager
async def scripted(reply: str, tmp_path: Path) -> AsyncIterator[tuple[InProcess, ScriptedBackend]]:
    backend = ScriptedBackend(NAME, [reply])
    settings = load_settings({"data_dir": str(tmp_path), "auth": {"enabled": False}}, env={})
    container = Container(settings, engines={NAME: PromptEngine(backend)})
    async with open_in_process(container) as g:
        yield g, backend


async def test_a_call_comes_back_as_message_tool_calls(tmp_path: Path) -> None:
    async with scripted(ONE_CALL, tmp_path) as (g, backend):
        raw = await g.client.chat.completions.with_raw_response.create(
            model=NAME, messages=ASK, tools=[WEATHER]
        )
        validate("CreateChatCompletionResponse", json.loads(raw.text))
        c = raw.parse()
        choice = c.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert (choice.message.content or "").strip() == "Let me check."
        call = choice.message.tool_calls[0]  # type: ignore[index]
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}
        prompt = backend.tokenizer.decode(backend.requests[-1])  # type: ignore[union-attr]
        assert "# Tools" in prompt and '"name": "get_weather"' in prompt


async def test_streamed_calls_follow_openai_deltas(tmp_path: Path) -> None:
    async with scripted(TWO_CALLS, tmp_path) as (g, _):
        body = {"model": NAME, "messages": ASK, "tools": [WEATHER, TIME], "stream": True}
        async with g.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = (await resp.aread()).decode()
        frames = [f[6:] for f in raw.split("\n\n") if f]
        assert frames[-1] == "[DONE]"
        chunks = [json.loads(f) for f in frames[:-1]]
        deltas = []
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)
            for choice in chunk["choices"]:
                deltas.extend(choice["delta"].get("tool_calls", []))
        assert [d["index"] for d in deltas] == [0, 0, 1, 1]
        assert deltas[0]["id"].startswith("call_") and deltas[0]["type"] == "function"
        assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
        assert json.loads(deltas[1]["function"]["arguments"]) == {"city": "巴黎"}
        assert deltas[2]["function"]["name"] == "get_time"
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert "<tool_call>" not in text and "get_weather" not in text


async def test_openai_sdk_stream_helper_assembles_the_calls(tmp_path: Path) -> None:
    async with scripted(TWO_CALLS, tmp_path) as (g, _):
        async with g.client.chat.completions.stream(
            model=NAME, messages=ASK, tools=[WEATHER, TIME]
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
        calls = final.choices[0].message.tool_calls or []
        assert [c.function.name for c in calls] == ["get_weather", "get_time"]
        assert [json.loads(c.function.arguments) for c in calls] == [{"city": "巴黎"}, {}]
        assert final.choices[0].finish_reason == "tool_calls"


async def test_langchain_chatopenai_gets_valid_tool_calls(tmp_path: Path) -> None:
    from langchain_openai import ChatOpenAI

    async with scripted(ONE_CALL, tmp_path) as (g, _):
        llm = ChatOpenAI(
            model=NAME,
            base_url="http://gateway/v1",
            api_key="unused",  # type: ignore[arg-type]
            http_async_client=g.http,
            max_retries=0,
        ).bind_tools([WEATHER], tool_choice="auto")
        message = await llm.ainvoke("Weather in Paris?")
        assert message.tool_calls[0]["name"] == "get_weather"  # type: ignore[attr-defined]
        assert message.tool_calls[0]["args"] == {"city": "Paris", "unit": "c"}  # type: ignore[attr-defined]
        merged: Any = None
        async for chunk in llm.astream("Weather in Paris?"):
            merged = chunk if merged is None else merged + chunk
        assert merged.tool_calls[0]["name"] == "get_weather"
        assert merged.tool_calls[0]["args"] == {"city": "Paris", "unit": "c"}


async def test_tool_choice_none_hides_the_tools(tmp_path: Path) -> None:
    async with scripted("Plain answer.", tmp_path) as (g, backend):
        c = await g.client.chat.completions.create(
            model=NAME, messages=ASK, tools=[WEATHER], tool_choice="none"
        )
        assert c.choices[0].message.content == "Plain answer."
        assert c.choices[0].finish_reason == "stop"
        prompt = backend.tokenizer.decode(backend.requests[-1])  # type: ignore[union-attr]
        assert "# Tools" not in prompt


async def test_history_with_tool_calls_and_results_is_accepted(tmp_path: Path) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
    ]  # fmt: skip
    async with scripted("It is 21 degrees.", tmp_path) as (g, backend):
        c = await g.client.chat.completions.create(model=NAME, messages=history, tools=[WEATHER])  # type: ignore[arg-type]
        assert c.choices[0].message.content == "It is 21 degrees."
        prompt = backend.tokenizer.decode(backend.requests[-1])  # type: ignore[union-attr]
        assert '<tool_response>\n{"temp": 21}\n</tool_response>' in prompt
        assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt


def _tool(name: str, parameters: Any = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("tool_choice names an unknown tool",
     {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ("tool_choice required without tools", {"tool_choice": "required"}, "tool_choice"),
    ("tool_choice not a mode", {"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ("duplicate tool names", {"tools": [WEATHER, WEATHER]}, "tools.[1].function.name"),
    ("tool name with a space", {"tools": [_tool("get weather")]}, "tools.[0].function.name"),
    ("tool name in unicode", {"tools": [_tool("天气")]}, "tools.[0].function.name"),
    ("parameters not a JSON Schema", {"tools": [_tool("f", {"type": "objekt"})]},
     "tools.[0].function.parameters"),
    ("tool result answering no call",
     {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
     "messages.[1].tool_call_id"),
    ("tool result without an id", {"messages": [*ASK, {"role": "tool", "content": "1"}]},
     "messages.[1].tool_call_id"),
    ("unknown response_format", {"response_format": {"type": "yaml"}}, "response_format.type"),
    ("json_schema without schema", {"response_format": {"type": "json_schema"}},
     "response_format.json_schema"),
    ("invalid json_schema",
     {"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format.json_schema.schema"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "param"), [pytest.param(*c[1:], id=c[0]) for c in BAD])
async def test_bad_tool_requests_are_400_naming_the_param(
    tmp_path: Path, changes: dict[str, Any], param: str
) -> None:
    async with scripted("x", tmp_path) as (g, _):
        body = {"model": NAME, "messages": ASK, **changes}
        resp = await g.http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param
        with pytest.raises(openai.BadRequestError):
            await g.client.chat.completions.create(**body)


async def test_many_tools_are_fine_and_a_megabyte_of_them_is_a_clean_400(tmp_path: Path) -> None:
    many = [_tool(f"tool_{i}", {"type": "object", "description": "d" * 200}) for i in range(200)]
    huge = [_tool(f"tool_{i}", {"type": "object", "description": "d" * 5000}) for i in range(200)]
    async with scripted("ok", tmp_path) as (g, _):
        c = await g.client.chat.completions.create(model=NAME, messages=ASK, tools=many)  # type: ignore[arg-type]
        assert c.choices[0].message.content == "ok"
        assert c.usage is not None and c.usage.prompt_tokens > 200 * 25
        resp = await g.http.post(
            "/v1/chat/completions", json={"model": NAME, "messages": ASK, "tools": huge}
        )
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "context_length_exceeded"


async def test_deeply_nested_input_is_a_clean_400(tmp_path: Path) -> None:
    async with scripted("ok", tmp_path) as (g, _):
        deep_schema = {"model": NAME, "messages": ASK, "tools": [_tool("f", _deep(400))]}
        resp = await g.http.post(
            "/v1/chat/completions",
            content=json.dumps(deep_schema, check_circular=False).encode(),
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 400, resp.text
        nested = b'{"model": "x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        resp = await g.http.post(
            "/v1/chat/completions", content=nested, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 400, resp.text


SCHEMA_FMT = {
    "type": "json_schema",
    "json_schema": {
        "name": "n",
        "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    },
}


@pytest.mark.parametrize(
    ("reply", "response_format", "ok"),
    [
        pytest.param('{"n": 1}', SCHEMA_FMT, True, id="valid"),
        pytest.param('{"n": "one"}', SCHEMA_FMT, False, id="schema violation"),
        pytest.param("not json at all", {"type": "json_object"}, False, id="not json"),
        pytest.param("[1, 2]", {"type": "json_object"}, False, id="not an object"),
    ],
)
async def test_json_from_an_engine_that_cannot_constrain_is_checked(
    tmp_path: Path, reply: str, response_format: dict[str, Any], ok: bool
) -> None:
    async with scripted(reply, tmp_path) as (g, _):
        body = {"model": NAME, "messages": ASK, "response_format": response_format}
        resp = await g.http.post("/v1/chat/completions", json=body)
        if ok:
            assert resp.status_code == 200
            assert json.loads(resp.json()["choices"][0]["message"]["content"]) == {"n": 1}
            return
        assert resp.status_code == 502
        assert resp.json()["error"]["code"] == "invalid_model_output"
        async with g.http.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}
        ) as s:
            frames = [f for f in (await s.aread()).decode().split("\n\n") if f]
        assert '"code":"invalid_model_output"' in frames[-1]
