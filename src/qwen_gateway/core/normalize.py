"""Wire requests (OpenAI JSON) -> core requests, with every check that blames the client.

Errors raised here are :class:`InvalidRequest` with ``param`` naming the offending field the
way OpenAI names it (``messages.[0].content``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    Role,
    SamplingParams,
    TextRequest,
    ToolCall,
)
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.protocol.chat import ChatCompletionMessage, ChatCompletionRequest
from qwen_gateway.protocol.common import SamplingFields
from qwen_gateway.protocol.completions import CompletionRequest

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for system
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
MAX_STOP = 4

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on client-controlled sizes."""

    max_output_tokens: int = 8192
    max_n: int = 8


def param_path(loc: Sequence[int | str]) -> str:
    """('messages', 0, 'role') -> 'messages.[0].role', as OpenAI writes params."""
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in loc]
    return ".".join(parts)


def parse_wire(model: type[M], raw: Any) -> M:
    """Validate a decoded JSON body; the first error becomes a 400 naming its field."""
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = [p for p in first["loc"] if not (isinstance(p, str) and "[" in p)]
        where = param_path(loc) or None
        msg = first["msg"]
        if first["type"] == "missing":
            msg = f"Missing required parameter: '{where}'."
        elif where:
            msg = f"Invalid value for '{where}': {msg}."
        raise InvalidRequest(msg, param=where, code="invalid_value") from None


def _sampling(
    wire: SamplingFields, max_tokens: int | None, limits: RequestLimits
) -> SamplingParams:
    if max_tokens is not None and max_tokens > limits.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens is too large: {max_tokens}. This model supports at most "
            f"{limits.max_output_tokens} completion tokens.",
            param="max_tokens",
            code="invalid_value",
        )
    if wire.n > limits.max_n:
        raise InvalidRequest(
            f"n is too large: {wire.n}; at most {limits.max_n} choices per request.",
            param="n",
            code="invalid_value",
        )
    stop: tuple[str, ...]
    if wire.stop is None:
        stop = ()
    elif isinstance(wire.stop, str):
        stop = (wire.stop,)
    else:
        if len(wire.stop) > MAX_STOP:
            raise InvalidRequest(
                f"stop may hold at most {MAX_STOP} sequences.", param="stop", code="invalid_value"
            )
        stop = tuple(wire.stop)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if wire.temperature is None else wire.temperature,
        top_p=1.0 if wire.top_p is None else wire.top_p,
        top_k=-1 if wire.top_k is None else wire.top_k,
        presence_penalty=wire.presence_penalty or 0.0,
        frequency_penalty=wire.frequency_penalty or 0.0,
        repetition_penalty=wire.repetition_penalty or 1.0,
        seed=wire.seed,
        stop=stop,
    )


def _content(m: ChatCompletionMessage, i: int) -> str | None:
    content = m.content
    if content is None or isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind != "text":
            raise InvalidRequest(
                f"Unsupported content part type {kind!r} in messages[{i}]; this model accepts "
                "only 'text' parts.",
                param=f"messages.[{i}].content.[{j}].type",
                code="invalid_value",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(
                f"messages[{i}].content[{j}].text must be a string.",
                param=f"messages.[{i}].content.[{j}].text",
                code="invalid_type",
            )
        texts.append(text)
    return "".join(texts)


def _arguments(raw: str | dict[str, Any], where: str) -> dict[str, Any] | str:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        raise InvalidRequest(
            "Tool call arguments must be a JSON object encoded as a string.",
            param=where,
            code="invalid_value",
        ) from None
    return cast(dict[str, Any], value) if isinstance(value, dict) else raw


def _messages(wire: Sequence[ChatCompletionMessage]) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    for i, m in enumerate(wire):
        role = _ROLES.get(m.role)
        if role is None:
            raise InvalidRequest(
                f"Invalid value: '{m.role}'. Supported roles are 'system', 'developer', 'user', "
                "'assistant' and 'tool'.",
                param=f"messages.[{i}].role",
                code="invalid_value",
            )
        content = _content(m, i)
        if content is None and not (role == "assistant"):
            raise InvalidRequest(
                f"messages[{i}] with role '{m.role}' must have content.",
                param=f"messages.[{i}].content",
                code="invalid_value",
            )
        calls: tuple[ToolCall, ...] = ()
        if m.tool_calls:
            if role != "assistant":
                raise InvalidRequest(
                    "Only assistant messages may carry tool_calls.",
                    param=f"messages.[{i}].tool_calls",
                )
            calls = tuple(
                ToolCall(
                    id=c.id or f"call_{i}_{j}",
                    name=c.function.name,
                    arguments=_arguments(
                        c.function.arguments, f"messages.[{i}].tool_calls.[{j}].function.arguments"
                    ),
                )
                for j, c in enumerate(m.tool_calls)
            )
        out.append(ChatMessage(role, content, calls, m.tool_call_id, m.name))
    return tuple(out)


def chat_request(
    raw: Mapping[str, Any], limits: RequestLimits, request_id: str = ""
) -> tuple[ChatCompletionRequest, ChatRequest]:
    wire = parse_wire(ChatCompletionRequest, raw)
    if wire.logprobs:
        raise InvalidRequest("logprobs are not supported.", param="logprobs")
    fmt = (wire.response_format or {}).get("type", "text")
    if fmt != "text":
        raise InvalidRequest(
            f"response_format type {fmt!r} is not supported yet.", param="response_format.type"
        )
    max_tokens = wire.max_completion_tokens or wire.max_tokens
    sampling = _sampling(wire, max_tokens, limits)
    tools = tuple(cast(list[dict[str, Any]], raw.get("tools") or []))
    request = ChatRequest(
        model=wire.model,
        messages=_messages(wire.messages),
        sampling=sampling,
        n=wire.n,
        tools=tools,
        request_id=request_id,
    )
    return wire, request


def text_request(
    raw: Mapping[str, Any], limits: RequestLimits, request_id: str = ""
) -> tuple[CompletionRequest, TextRequest]:
    wire = parse_wire(CompletionRequest, raw)
    prompt = wire.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
        if len(prompt) != 1:
            raise InvalidRequest(
                "Only one prompt per request is supported; send several requests.",
                param="prompt",
            )
        prompt = prompt[0]
    if wire.suffix:
        raise InvalidRequest("suffix is not supported.", param="suffix")
    if wire.logprobs is not None:
        raise InvalidRequest("logprobs are not supported.", param="logprobs")
    if wire.best_of not in (None, 1):
        raise InvalidRequest("best_of is not supported.", param="best_of")
    sampling = _sampling(wire, wire.max_tokens, limits)
    core_prompt: str | tuple[int, ...] = (
        prompt if isinstance(prompt, str) else tuple(int(t) for t in cast(list[int], prompt))
    )
    return wire, TextRequest(wire.model, core_prompt, sampling, wire.n, request_id)
