"""The Messages edge: an Anthropic body becomes the core chat request (system, blocks, tools,
tool_choice, sampling), and core events become Anthropic's message or stream events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import pytest

from qwen_gateway.core.normalize import RequestLimits, parse_wire
from qwen_gateway.core.record import RequestRecord
from qwen_gateway.core.types import (
    ChatMessage,
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    RelayedChunk,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.protocol.messages import MessageCountTokensParams, MessageCreateParams
from qwen_gateway.service.messages import MessagesService, chat_request

LIMITS = RequestLimits(max_output_tokens=100)
ASK = [{"role": "user", "content": "Weather in Oslo?"}]
TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}


def normalise(**body: Any) -> Any:
    wire = parse_wire(
        MessageCreateParams, {"model": "m", "max_tokens": 10, "messages": ASK, **body}
    )
    return chat_request(wire, LIMITS, "req_1")


def test_system_blocks_and_sampling() -> None:
    request = normalise(
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        stop_sequences=["END"], temperature=0.0, top_p=0.5, top_k=7, stream=True,
    )  # fmt: skip
    assert request.messages[0] == ChatMessage("system", "Be brief.")
    assert request.messages[1] == ChatMessage("user", "Weather in Oslo?")
    s = request.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.stop) == (10, 0.0, 0.5, 7, ("END",))
    assert request.stream and request.request_id == "req_1"
    assert normalise().messages == (ChatMessage("user", "Weather in Oslo?"),)  # no system


def test_tool_turns_become_tool_calls_and_tool_messages() -> None:
    request = normalise(
        tools=[TOOL],
        messages=[
            *ASK,
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "-3 C"}]},
                {"type": "text", "text": "Thanks."},
            ]},
        ],
    )  # fmt: skip
    assert request.tools == (
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object"},
            },
        },
    )
    assert request.messages[1:] == (
        ChatMessage(
            "assistant", "Checking.", (ToolCall("toolu_1", "get_weather", {"city": "Oslo"}),)
        ),
        ChatMessage("tool", "-3 C", tool_call_id="toolu_1"),
        ChatMessage("user", "Thanks."),
    )


@pytest.mark.parametrize(
    ("choice", "mode", "name", "parallel"),
    [
        (None, "auto", None, None),
        ({"type": "auto"}, "auto", None, None),
        ({"type": "none"}, "none", None, None),
        ({"type": "any"}, "required", None, True),
        ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
         "named", "get_weather", False),
    ],
)  # fmt: skip
def test_tool_choice_maps_onto_the_core_choice_and_constraint(
    choice: dict[str, Any] | None, mode: str, name: str | None, parallel: bool | None
) -> None:
    body: dict[str, Any] = {"tools": [TOOL, {**TOOL, "name": "other"}]}
    if choice is not None:
        body["tool_choice"] = choice
    request = normalise(**body)
    assert (request.tool_choice.mode, request.tool_choice.name) == (mode, name)
    if parallel is None:
        assert request.constraint is None
    else:
        assert request.constraint is not None and request.constraint.kind == "tool_calls"
        assert request.constraint.parallel is parallel
        names = [t["name"] for t in request.constraint.tools]
        assert names == ([name] if name else ["get_weather", "other"])
    assert bool(request.tools) is (mode != "none")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 101}, "max_tokens"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences"),
        ({"stop_sequences": [""]}, "stop_sequences"),
        ({"tools": [TOOL, TOOL]}, "tools.[1].name"),
        ({"tools": [{**TOOL, "name": "bad name"}]}, "tools.[0].name"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tool_choice": {"type": "any"}}, "tool_choice.type"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "x", "input": {}}]}]},
         "messages.[0].content.[0].type"),
        ({"messages": [{"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t"}]}]}, "messages.[0].content.[0].type"),
        ({"metadata": {"user_id": "u" * 300}}, "metadata.user_id"),
        ({"messages": [{"role": "user", "content": []}]}, "messages.[0].content"),
        ({"top_k": -1}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"thinking": {"type": "adaptive"}}, "thinking"),
    ],
)  # fmt: skip
def test_bad_bodies_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as bad:
        normalise(**body)
    assert bad.value.param == param


def test_thinking_disabled_is_accepted() -> None:
    assert normalise(thinking={"type": "disabled"}).messages


def test_count_tokens_needs_no_max_tokens() -> None:
    wire = parse_wire(MessageCountTokensParams, {"model": "m", "messages": ASK})
    request = chat_request(wire, LIMITS)
    assert request.sampling.max_tokens is None and not request.stream


# ---- rendering --------------------------------------------------------------------------


class ScriptedGenerate:
    """A fake pipeline: the given core events, whatever the request (records what it got)."""

    def __init__(self, events: Sequence[EngineEvent]) -> None:
        self.events = events
        self.users: list[str | None] = []
        self.closed = False

    def __call__(
        self, request: GenerationRequest, record: RequestRecord, user: str | None
    ) -> AsyncGenerator[EngineEvent, None]:
        self.users.append(user)
        return self._run()

    async def _run(self) -> AsyncGenerator[EngineEvent, None]:
        try:
            for event in self.events:
                yield event
        finally:
            self.closed = True


async def _counted(request: GenerationRequest) -> int:
    """The gate's count of a prompt the scripted engine does not meter (as an upstream's)."""
    return 12


def service(events: Sequence[EngineEvent]) -> tuple[MessagesService, ScriptedGenerate]:
    generate = ScriptedGenerate(events)
    return MessagesService(None, LIMITS, generate, _counted), generate  # type: ignore[arg-type]


CALL = ToolCallDelta(0, 0, "call_1", "get_weather", '{"city": "Oslo"}')
EVENTS: list[EngineEvent] = [
    TextDelta(0, "Let me "),
    TextDelta(0, "check."),
    CALL,
    ChoiceFinished(0, "tool_calls"),
    Usage(12, 9),
]
BODY = {"model": "m", "max_tokens": 10, "messages": ASK, "metadata": {"user_id": "u-7"}}


async def test_events_become_a_message() -> None:
    svc, generate = service(EVENTS)
    record = RequestRecord("req_1")
    message = await svc.create(BODY, record)
    assert isinstance(message, dict)
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert message["stop_reason"] == "tool_use" and message["stop_sequence"] is None
    assert message["usage"] == {"input_tokens": 12, "output_tokens": 9}
    assert generate.users == ["u-7"] and generate.closed
    assert (record.prompt_tokens, record.completion_tokens) == (12, 9)


@pytest.mark.parametrize(
    ("reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
)
async def test_finish_reasons_map_to_stop_reasons(reason: Any, stop_reason: str) -> None:
    svc, _ = service([TextDelta(0, "x"), ChoiceFinished(0, reason), Usage(1, 1)])
    message = await svc.create(BODY, RequestRecord("r"))
    assert isinstance(message, dict) and message["stop_reason"] == stop_reason


async def test_a_stop_sequence_the_engine_names_is_the_stop_reason() -> None:
    svc, _ = service([TextDelta(0, "x"), ChoiceFinished(0, "stop", "END"), Usage(1, 1)])
    message = await svc.create(BODY, RequestRecord("r"))
    assert isinstance(message, dict)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


async def _stream(events: Sequence[EngineEvent]) -> list[dict[str, Any]]:
    svc, generate = service(events)
    stream = await svc.create({**BODY, "stream": True}, RequestRecord("r"))
    assert not isinstance(stream, dict)
    async with aclosing(stream):
        out = [dict(e) async for e in stream]
    assert generate.closed
    return out


async def test_events_become_the_stream_in_anthropics_order() -> None:
    events = await _stream(EVENTS)
    assert [e["type"] for e in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[6]["content_block"] == {
        "type": "tool_use", "id": "call_1", "name": "get_weather", "input": {},
    }  # fmt: skip
    assert events[7]["delta"] == {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}
    assert events[9]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[9]["usage"] == {"input_tokens": 12, "output_tokens": 9}
    assert events[0]["message"]["usage"] == {"input_tokens": 12, "output_tokens": 0}


async def test_a_relayed_upstream_chunk_counts_for_the_events_it_carries() -> None:
    relayed = RelayedChunk(b'{"openai": "bytes"}', (TextDelta(0, "Hi"), ChoiceFinished(0, "stop")))
    events = await _stream([relayed, Usage(3, 1)])
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == [{"type": "text_delta", "text": "Hi"}]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    svc, _ = service([relayed, Usage(3, 1)])
    message = await svc.create(BODY, RequestRecord("r"))
    assert isinstance(message, dict) and message["content"] == [{"type": "text", "text": "Hi"}]


async def test_closing_the_stream_early_closes_the_engine_stream() -> None:
    svc, generate = service(EVENTS)
    stream = await svc.create({**BODY, "stream": True}, RequestRecord("r"))
    assert not isinstance(stream, dict)
    async with aclosing(stream):
        assert (await anext(stream))["type"] == "message_start"
    assert generate.closed


def test_output_config_format_is_a_json_constraint_unless_a_tool_is_forced() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"format": {"type": "json_schema", "schema": schema}, "effort": "low"}
    request = normalise(output_config=fmt)
    assert request.constraint is not None
    assert (request.constraint.kind, request.constraint.schema) == ("json", schema)
    forced = normalise(output_config=fmt, tools=[TOOL], tool_choice={"type": "any"})
    assert forced.constraint is not None and forced.constraint.kind == "tool_calls"
    with pytest.raises(InvalidRequest) as bad:
        normalise(output_config={"format": {"type": "json_schema", "schema": {"type": 3}}})
    assert bad.value.param == "output_config.format.schema"
