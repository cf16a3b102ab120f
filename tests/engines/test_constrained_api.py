"""Forced tool calls and JSON output from the real (random-weight) engine, through the API.

Left alone the tiny model rambles; only the grammar constraint can make these pass, on every
seed, at generous and at tight ``max_tokens``, streamed and not.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest

from support.fixtures import MODEL, InProcess

SEEDS = range(20)
WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMS}},
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"zip": {"type": "string", "maxLength": 6}},
            "required": ["zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "address"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Do the thing."}]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _check_calls(calls: list[Any], allowed: set[str]) -> None:
    assert calls, "no tool call"
    for call in calls:
        assert call.function.name in allowed
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, PARAMS[call.function.name])


@pytest.mark.parametrize("max_tokens", [200, 40])
async def test_required_tool_choice_always_yields_valid_calls(
    gateway: InProcess, max_tokens: int
) -> None:
    async def one(seed: int) -> None:
        c = await gateway.client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",  # type: ignore[arg-type]
            max_tokens=max_tokens, temperature=1.0, seed=seed, parallel_tool_calls=False,
        )  # fmt: skip
        choice = c.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        _check_calls(choice.message.tool_calls or [], {"get_weather", "add"})
        assert len(choice.message.tool_calls or []) == 1

    await asyncio.gather(*(one(seed) for seed in SEEDS))


async def test_named_tool_choice_streams_a_valid_call(gateway: InProcess) -> None:
    async def one(seed: int) -> None:
        async with gateway.client.chat.completions.stream(
            model=MODEL, messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "add"}},
            max_tokens=60, temperature=1.0, seed=seed,
        ) as stream:  # fmt: skip
            final = await stream.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls"
        _check_calls(choice.message.tool_calls or [], {"add"})

    await asyncio.gather(*(one(seed) for seed in SEEDS))


@pytest.mark.parametrize("max_tokens", [300, 45])
async def test_json_schema_output_always_validates(gateway: InProcess, max_tokens: int) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }

    async def one(seed: int) -> str:
        c = await gateway.client.chat.completions.create(
            model=MODEL, messages=ASK, response_format=fmt,  # type: ignore[arg-type]
            max_tokens=max_tokens, temperature=1.0, seed=seed,
        )  # fmt: skip
        content = c.choices[0].message.content or ""
        jsonschema.validate(json.loads(content), PERSON)
        assert c.choices[0].finish_reason in ("stop", "length")
        return c.choices[0].finish_reason

    reasons = await asyncio.gather(*(one(seed) for seed in SEEDS))
    assert set(reasons) <= {"stop", "length"}


async def test_json_object_output_always_parses_streamed_and_not(gateway: InProcess) -> None:
    async def one(seed: int) -> None:
        args: dict[str, Any] = {
            "model": MODEL, "messages": ASK, "response_format": {"type": "json_object"},
            "max_tokens": 80, "temperature": 0.8, "seed": seed,
        }  # fmt: skip
        whole = await gateway.client.chat.completions.create(**args)
        assert isinstance(json.loads(whole.choices[0].message.content or ""), dict)
        stream = await gateway.client.chat.completions.create(**args, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text == whole.choices[0].message.content

    await asyncio.gather(*(one(seed) for seed in SEEDS))


async def test_langchain_structured_output_and_forced_tools(gateway: InProcess) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url="http://gateway/v1", api_key="unused",  # type: ignore[arg-type]
        http_async_client=gateway.http, max_retries=0, max_tokens=120, temperature=1.0, seed=3,
    )  # fmt: skip
    structured = llm.with_structured_output(
        {"title": "person", "description": "A person", **PERSON}, method="json_schema", strict=True
    )
    person = await structured.ainvoke("Make up a person.")
    jsonschema.validate(person, PERSON)
    forced = llm.bind_tools(TOOLS, tool_choice="any")
    message = await forced.ainvoke("Weather?")
    assert message.tool_calls  # type: ignore[attr-defined]
    call = message.tool_calls[0]  # type: ignore[attr-defined]
    jsonschema.validate(call["args"], PARAMS[call["name"]])


@pytest.mark.parametrize("ref", ["http://127.0.0.1:9/s.json", "file:///etc/passwd", "#/$defs/x"])
async def test_a_ref_outside_the_schema_is_a_400_naming_the_parameter(
    gateway: InProcess, ref: str
) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    body = {"model": MODEL, "messages": ASK, "max_tokens": 5, "response_format": fmt}
    refused = await gateway.http.post("/v1/chat/completions", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "response_format"
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = {"model": MODEL, "messages": ASK, "tools": [tool], "tool_choice": "required"}
    refused = await gateway.http.post("/v1/chat/completions", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tools"
