"""Responses API bodies -> core chat requests: items, tools, tool choice and formats."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_gateway.core.normalize import RequestLimits
from qwen_gateway.core.responses import parse_response_params, response_request
from qwen_gateway.core.types import ChatMessage, OutputConstraint, ToolCall
from qwen_gateway.errors import InvalidRequest

LIMITS = RequestLimits(max_output_tokens=100)
TOOL = {"type": "function", "name": "f", "strict": True, "description": "d",
        "parameters": {"type": "object"}}  # fmt: skip


def request(**body: Any) -> Any:
    params = parse_response_params({"model": "m", **body}, LIMITS)
    return params, response_request(params)


def test_a_string_input_is_one_user_message_item() -> None:
    params, req = request(input="hi", instructions="sys")
    assert [i["type"] for i in params.items] == ["message"]
    assert params.items[0]["id"].startswith("msg_")
    assert req.messages == (ChatMessage("system", "sys"), ChatMessage("user", "hi"))


def test_function_calls_join_the_assistant_turn_before_them() -> None:
    _, req = request(input=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": ""},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "two"}]},
    ], tools=[TOOL])  # fmt: skip
    assert req.messages == (
        ChatMessage("user", "q"),
        ChatMessage("assistant", "Checking.", (ToolCall("c1", "f", {"a": 1}),
                                               ToolCall("c2", "f", {}))),
        ChatMessage("tool", "one", tool_call_id="c1"),
        ChatMessage("tool", "two", tool_call_id="c2"),
    )  # fmt: skip


def test_tools_take_chats_shape_in_the_order_sent() -> None:
    _, req = request(input="x", tools=[TOOL], tool_choice="required",
                          parallel_tool_calls=False)  # fmt: skip
    (tool,) = req.tools
    assert tool == {
        "type": "function",
        "function": {
            "name": "f",
            "strict": True,
            "description": "d",
            "parameters": {"type": "object"},
        },
    }
    assert list(tool["function"]) == ["name", "strict", "description", "parameters"]
    assert req.constraint == OutputConstraint("tool_calls", tools=(tool["function"],),
                                              parallel=False)  # fmt: skip
    _, hidden = request(input="x", tools=[TOOL], tool_choice="none")
    assert hidden.tools == () and hidden.constraint is None


def test_text_formats_become_the_json_constraint() -> None:
    _, plain = request(input="x", text={"format": {"type": "text"}})
    assert plain.constraint is None
    _, obj = request(input="x", text={"format": {"type": "json_object"}})
    assert obj.constraint == OutputConstraint("json")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    _, typed = request(input="x", text={"format": {"type": "json_schema", "name": "n",
                                                   "schema": schema, "strict": True}})  # fmt: skip
    assert typed.constraint == OutputConstraint("json", schema=schema)


def test_sampling_fields_map_onto_the_core_request() -> None:
    _, req = request(input="x", temperature=0.0, top_p=0.5, max_output_tokens=7)
    assert (req.sampling.temperature, req.sampling.top_p, req.sampling.max_tokens) == (
        0.0, 0.5, 7,
    )  # fmt: skip
    with pytest.raises(InvalidRequest) as large:
        request(input="x", max_output_tokens=101)
    assert large.value.param == "max_output_tokens"


def test_a_result_may_answer_a_call_from_the_stored_conversation() -> None:
    params = parse_response_params(
        {"model": "m", "input": [{"type": "function_call_output", "call_id": "c9",
                                  "output": "ok"}]}, LIMITS)  # fmt: skip
    with pytest.raises(InvalidRequest) as orphan:
        response_request(params)
    assert orphan.value.param == "input.[0].call_id"
    history: Any = [{"id": "fc_1", "type": "function_call", "call_id": "c9", "name": "f",
                     "arguments": "{}", "status": "completed"}]  # fmt: skip
    req = response_request(params, history)
    assert req.messages[-1] == ChatMessage("tool", "ok", tool_call_id="c9")
