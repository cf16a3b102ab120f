"""Responses API requests (``POST /v1/responses``) -> core chat requests.

Two steps: :func:`parse_response_params` checks the body (every 400 names its parameter as
OpenAI writes it, e.g. ``input.[2].call_id``) and turns the input into items in the shape the
input_items endpoint lists them; :func:`response_request` makes the core request from the
conversation before (a stored ``previous_response_id``: its input and output items) and those
items. Tool calls, tool results and constrained output mean what they mean in chat.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from qwen_gateway.core.normalize import (
    MIN_TEMPERATURE,
    RequestLimits,
    check_json_schema,
    parse_wire,
)
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    OutputConstraint,
    Role,
    SamplingParams,
    ToolCall,
    ToolChoice,
)
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.protocol.responses import (
    InputMessage,
    InputTextContent,
    ItemResource,
    OutputMessage,
    OutputTextContent,
    Response,
    ResponseCreateParams,
)

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_INPUT_ROLES = ("user", "system", "developer")
_ROLES: dict[str, Role] = {
    "user": "user",
    "system": "system",
    "developer": "system",
    "assistant": "assistant",
}
MAX_METADATA = 16
MAX_ITEMS = 2048


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(frozen=True, slots=True)
class ResponseParams:
    """A checked body: the wire model, its input as items, and its tools in chat's shape."""

    wire: ResponseCreateParams
    items: tuple[ItemResource, ...]
    #: ``{"type": "function", "function": {...}}`` as chat sends them (the template's shape)
    tools: tuple[dict[str, Any], ...]
    tool_choice: ToolChoice
    constraint: OutputConstraint | None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as stored: the object, its own input items, and the conversation before
    it (what ``previous_response_id`` brought in), so that a follow-up needs one read."""

    id: str
    principal: str
    response: Response
    input_items: list[ItemResource]
    conversation: list[ItemResource]
    created_at: datetime
    expires_at: datetime


def _refuse(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{what} is not supported by this server.", param=param, code="unsupported_parameter"
    )


def _check_unsupported(wire: ResponseCreateParams) -> None:
    if wire.background:
        raise _refuse("background", "Background mode ('background': true)")
    if wire.reasoning is not None:
        raise _refuse("reasoning", "'reasoning' (this model does not produce reasoning items)")
    if wire.include:
        raise _refuse("include", "'include'")
    if wire.truncation not in (None, "disabled"):
        raise _refuse("truncation", f"truncation {wire.truncation!r}")
    if wire.top_logprobs:
        raise _refuse("top_logprobs", "'top_logprobs'")
    if wire.max_tool_calls is not None:
        raise _refuse("max_tool_calls", "'max_tool_calls' (it limits built-in tools)")
    if wire.conversation is not None:
        raise _refuse("conversation", "'conversation' (use previous_response_id)")
    if wire.prompt is not None:
        raise _refuse("prompt", "'prompt' (stored prompt templates)")
    if wire.text is not None and wire.text.verbosity is not None:
        raise _refuse("text.verbosity", "'text.verbosity'")
    if wire.metadata is not None:
        if len(wire.metadata) > MAX_METADATA:
            raise InvalidRequest(
                f"metadata may hold at most {MAX_METADATA} pairs.",
                param="metadata",
                code="invalid_value",
            )
        for key, value in wire.metadata.items():
            if len(key) > 64 or len(value) > 512:
                raise InvalidRequest(
                    "metadata keys are at most 64 characters and values at most 512.",
                    param=f"metadata.{key[:64]}",
                    code="invalid_value",
                )


def parse_response_params(raw: Any, limits: RequestLimits) -> ResponseParams:
    wire = parse_wire(ResponseCreateParams, raw)
    _check_unsupported(wire)
    if wire.max_output_tokens is not None and wire.max_output_tokens > limits.max_output_tokens:
        raise InvalidRequest(
            f"max_output_tokens is too large: {wire.max_output_tokens}. This model supports at "
            f"most {limits.max_output_tokens} output tokens.",
            param="max_output_tokens",
            code="invalid_value",
        )
    if wire.input is None:
        if wire.previous_response_id is None:
            raise InvalidRequest(
                "Missing required parameter: 'input'.", param="input", code="missing_required"
            )
        items: tuple[ItemResource, ...] = ()
    elif isinstance(wire.input, str):
        items = (_user_text(wire.input),)
    else:
        if len(wire.input) > MAX_ITEMS:
            raise InvalidRequest(
                f"input may hold at most {MAX_ITEMS} items.", param="input", code="invalid_value"
            )
        items = tuple(_item(item, i) for i, item in enumerate(wire.input))
    tools = _tools(wire.tools)
    choice = _tool_choice(wire.tool_choice, tools)
    constraint = _format(wire)
    if choice.mode in ("required", "named"):
        allowed = [
            t["function"] for t in tools
            if choice.mode == "required" or t["function"]["name"] == choice.name
        ]  # fmt: skip
        constraint = OutputConstraint(
            "tool_calls", tools=tuple(allowed), parallel=wire.parallel_tool_calls is not False
        )
    return ResponseParams(wire, items, tools, choice, constraint)


def response_request(
    params: ResponseParams,
    history: Sequence[ItemResource] = (),
    request_id: str = "",
) -> ChatRequest:
    """The core request: instructions first, then the stored conversation, then the input."""
    wire = params.wire
    messages: list[ChatMessage] = []
    if wire.instructions is not None:
        messages.append(ChatMessage("system", wire.instructions))
    seen: set[str] = set()
    for item in history:
        _append(messages, item, seen, None)
    for i, item in enumerate(params.items):
        _append(messages, item, seen, i)
    if not messages:
        raise InvalidRequest("The input holds no items.", param="input", code="invalid_value")
    temperature = 1.0 if wire.temperature is None else wire.temperature
    sampling = SamplingParams(
        max_tokens=wire.max_output_tokens,
        temperature=0.0 if temperature < MIN_TEMPERATURE else temperature,
        top_p=1.0 if wire.top_p is None else wire.top_p,
    )
    return ChatRequest(
        model=wire.model,
        messages=tuple(messages),
        sampling=sampling,
        tools=() if params.tool_choice.mode == "none" else params.tools,
        tool_choice=params.tool_choice,
        constraint=params.constraint,
        request_id=request_id,
        stream=bool(wire.stream),
    )


def _append(
    messages: list[ChatMessage], item: ItemResource, seen: set[str], index: int | None
) -> None:
    """Add one item; function calls join the assistant turn before them (Qwen renders the
    calls of one turn together), as its tool_calls."""
    if item["type"] == "message":
        message = item
        text = "".join(part["text"] for part in message["content"])
        messages.append(ChatMessage(_ROLES[message["role"]], text))
    elif item["type"] == "function_call":
        call = item
        seen.add(call["call_id"])
        arguments = _arguments(call["arguments"], index)
        new = ToolCall(call["call_id"], call["name"], arguments)
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant":
            messages[-1] = ChatMessage("assistant", last.content, (*last.tool_calls, new))
        else:
            messages.append(ChatMessage("assistant", None, (new,)))
    else:
        result = item
        if result["call_id"] not in seen:
            raise InvalidRequest(
                f"No function_call with call_id {result['call_id'][:64]!r} comes before this "
                "function_call_output.",
                param=f"input.[{index}].call_id" if index is not None else "previous_response_id",
                code="invalid_value",
            )
        messages.append(ChatMessage("tool", result["output"], tool_call_id=result["call_id"]))


def _arguments(raw: str, index: int | None) -> dict[str, Any] | str:
    import json

    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        raise InvalidRequest(
            "function_call arguments must be a JSON object encoded as a string.",
            param=f"input.[{index}].arguments" if index is not None else "previous_response_id",
            code="invalid_value",
        ) from None
    return cast(dict[str, Any], value) if isinstance(value, dict) else raw


# ---- input items ------------------------------------------------------------


def _user_text(text: str) -> InputMessage:
    return {
        "id": item_id("msg"),
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def _string(raw: Mapping[str, Any], key: str, where: str, *, max_length: int = 0) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        if value is None:
            raise InvalidRequest(
                f"Missing required parameter: '{where}.{key}'.",
                param=f"{where}.{key}",
                code="missing_required",
            )
        raise InvalidRequest(
            f"Invalid type for '{where}.{key}': expected a string.",
            param=f"{where}.{key}",
            code="invalid_type",
        )
    if max_length and not 1 <= len(value) <= max_length:
        raise InvalidRequest(
            f"'{where}.{key}' must be 1 to {max_length} characters.",
            param=f"{where}.{key}",
            code="invalid_value",
        )
    return value


def _item(raw: Any, i: int) -> ItemResource:
    where = f"input.[{i}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(
            f"Invalid type for '{where}': expected an object.", param=where, code="invalid_type"
        )
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind == "message":
        return _message(raw, where)
    if kind == "function_call":
        return {
            "id": item_id("fc"),
            "type": "function_call",
            "call_id": _string(raw, "call_id", where, max_length=64),
            "name": _string(raw, "name", where, max_length=64),
            "arguments": _string(raw, "arguments", where),
            "status": "completed",
        }
    if kind == "function_call_output":
        output = raw.get("output")
        if isinstance(output, list):
            text = "".join(_parts(output, f"{where}.output", ("input_text", "output_text")))
        else:
            text = _string(raw, "output", where)
        return {
            "id": item_id("fco"),
            "type": "function_call_output",
            "call_id": _string(raw, "call_id", where, max_length=64),
            "output": text,
            "status": "completed",
        }
    raise InvalidRequest(
        f"Input items of type {kind!r} are not supported: use 'message', 'function_call' or "
        "'function_call_output'.",
        param=f"{where}.type",
        code="invalid_value",
    )


def _message(raw: Mapping[str, Any], where: str) -> InputMessage | OutputMessage:
    role = raw.get("role")
    if not isinstance(role, str):
        raise InvalidRequest(
            f"Invalid type for '{where}.role': expected a string."
            if role is not None
            else f"Missing required parameter: '{where}.role'.",
            param=f"{where}.role",
            code="invalid_type" if role is not None else "missing_required",
        )
    if role not in _ROLES:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': use 'user', 'assistant', 'system' or 'developer'.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = raw.get("content")
    allowed = ("output_text", "refusal") if role == "assistant" else ("input_text",)
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = _parts(content, f"{where}.content", allowed)
    else:
        raise InvalidRequest(
            f"Invalid type for '{where}.content': expected a string or a list of parts.",
            param=f"{where}.content",
            code="invalid_type",
        )
    if role == "assistant":
        out: list[OutputTextContent] = [
            {"type": "output_text", "text": t, "annotations": [], "logprobs": []} for t in texts
        ]
        return {
            "id": item_id("msg"),
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": out,
        }
    parts: list[InputTextContent] = [{"type": "input_text", "text": t} for t in texts]
    return {
        "id": item_id("msg"),
        "type": "message",
        "role": cast(Any, role),  # user, system or developer, as sent
        "status": "completed",
        "content": parts,
    }


def _parts(content: list[Any], where: str, allowed: tuple[str, ...]) -> list[str]:
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise InvalidRequest(
                f"Content parts of type {kind!r} are not supported here: use "
                f"{' or '.join(repr(a) for a in allowed)} (this model reads text only).",
                param=f"{where}.[{j}].type",
                code="invalid_value",
            )
        key = "refusal" if kind == "refusal" else "text"
        texts.append(_string(part, key, f"{where}.[{j}]"))
    return texts


# ---- tools and formats ----------------------------------------------------------


def _tools(raw: list[dict[str, Any]] | None) -> tuple[dict[str, Any], ...]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(raw or ()):
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequest(
                f"Tools of type {kind!r} are not supported: this server runs only 'function' "
                "tools, which your code executes.",
                param=f"tools.[{i}].type",
                code="unsupported_parameter",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise InvalidRequest(
                f"Invalid tool name {name!r}: use 1 to 64 letters, digits, '_' or '-'.",
                param=f"tools.[{i}].name",
                code="invalid_value",
            )
        if name in seen:
            raise InvalidRequest(
                f"Duplicate tool name {name!r}: tool names must be unique.",
                param=f"tools.[{i}].name",
                code="invalid_value",
            )
        seen.add(name)
        for key in ("description",):
            if tool.get(key) is not None and not isinstance(tool[key], str):
                raise InvalidRequest(
                    f"tools[{i}].{key} must be a string.",
                    param=f"tools.[{i}].{key}",
                    code="invalid_type",
                )
        if tool.get("parameters") is not None:
            check_json_schema(tool["parameters"], f"tools.[{i}].parameters")
        extra = set(tool) - {"type", "name", "description", "parameters", "strict"}
        if extra:
            key = sorted(extra)[0]
            raise _refuse(f"tools.[{i}].{key}", f"The tool field {key!r}")
        # chat's shape, the rest in the order the client sent it: the template renders it
        function = {k: v for k, v in tool.items() if k != "type" and v is not None}
        out.append({"type": "function", "function": function})
    return tuple(out)


def _tool_choice(raw: str | dict[str, Any] | None, tools: Sequence[dict[str, Any]]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise InvalidRequest(
                f"Invalid tool_choice {raw!r}: use 'none', 'auto', 'required' or "
                '{"type": "function", "name": ...}.',
                param="tool_choice",
                code="invalid_value",
            )
        if raw == "required" and not tools:
            raise InvalidRequest(
                "tool_choice 'required' needs at least one tool in 'tools'.",
                param="tool_choice",
                code="invalid_value",
            )
        return ToolChoice(cast(Any, raw))
    if raw.get("type") != "function":
        raise _refuse("tool_choice.type", f"tool_choice of type {raw.get('type')!r}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidRequest(
            "Invalid type for 'tool_choice.name': expected a string.",
            param="tool_choice.name",
            code="invalid_type",
        )
    if name not in {t["function"]["name"] for t in tools}:
        raise InvalidRequest(
            f"tool_choice names the function {name!r}, which is not in 'tools'.",
            param="tool_choice.name",
            code="invalid_value",
        )
    return ToolChoice("named", name)


def _format(wire: ResponseCreateParams) -> OutputConstraint | None:
    fmt = wire.text.format if wire.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputConstraint("json")
    if fmt.type == "json_schema":
        if not fmt.name:
            raise InvalidRequest(
                "Missing required parameter: 'text.format.name'.",
                param="text.format.name",
                code="missing_required",
            )
        if fmt.schema_ is None:
            raise InvalidRequest(
                "Missing required parameter: 'text.format.schema'.",
                param="text.format.schema",
                code="missing_required",
            )
        schema = check_json_schema(fmt.schema_, "text.format.schema")
        return OutputConstraint("json", schema=schema)
    raise InvalidRequest(
        f"Invalid text.format type {fmt.type!r}: use 'text', 'json_object' or 'json_schema'.",
        param="text.format.type",
        code="invalid_value",
    )
