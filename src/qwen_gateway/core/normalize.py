"""Wire requests (OpenAI JSON) -> core requests, with every check that blames the client.

Errors raised here are :class:`InvalidRequest` with ``param`` naming the offending field the
way OpenAI names it (``messages.[0].content``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError

from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    OutputConstraint,
    Role,
    SamplingParams,
    TextRequest,
    ToolCall,
    ToolChoice,
)
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.protocol.chat import ChatCompletionMessage, ChatCompletionRequest
from qwen_gateway.protocol.common import INT64_MAX, SamplingFields
from qwen_gateway.protocol.completions import CompletionRequest

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for system
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
MAX_STOP = 4
MAX_LOGIT_BIAS = 100
#: Temperatures below this sample greedily (dividing logits by less overflows them).
MIN_TEMPERATURE = 1e-5
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SCALAR_TYPES = frozenset({"str", "int", "float", "bool"})
_TOKEN_ID = re.compile(r"[0-9]{1,9}")

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


def _union_member(part: int | str) -> bool:
    """Whether a pydantic error location part names a member of a union type, not a field."""
    return isinstance(part, str) and ("[" in part or part in _SCALAR_TYPES)


def parse_wire(model: type[M], raw: Any) -> M:
    """Validate a decoded JSON body; the first error becomes a 400 naming its field."""
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = [p for p in first["loc"] if not _union_member(p)]
        where = param_path(loc) or None
        msg = first["msg"]
        if first["type"] == "missing":
            msg = f"Missing required parameter: '{where}'."
        elif where:
            msg = f"Invalid value for '{where}': {msg}."
        raise InvalidRequest(msg, param=where, code="invalid_value") from None


def _sampling(
    wire: SamplingFields, max_tokens: int | None, limits: RequestLimits, max_param: str
) -> SamplingParams:
    if max_tokens is not None and max_tokens > limits.max_output_tokens:
        raise InvalidRequest(
            f"{max_param} is too large: {max_tokens}. This model supports at most "
            f"{limits.max_output_tokens} completion tokens.",
            param=max_param,
            code="invalid_value",
        )
    if wire.n > limits.max_n:
        raise InvalidRequest(
            f"n is too large: {wire.n}; at most {limits.max_n} choices per request.",
            param="n",
            code="invalid_value",
        )
    if wire.seed is not None and wire.seed + wire.n - 1 > INT64_MAX:
        raise InvalidRequest(
            f"seed is too large for n={wire.n}: choice i is seeded with seed + i, which must "
            f"stay at most {INT64_MAX}.",
            param="seed",
            code="invalid_value",
        )
    _check_logit_bias(wire.logit_bias)
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
    temperature = 1.0 if wire.temperature is None else wire.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        # dividing logits by a temperature this small overflows: it means greedy anyway
        temperature=0.0 if temperature < MIN_TEMPERATURE else temperature,
        top_p=1.0 if wire.top_p is None else wire.top_p,
        top_k=-1 if wire.top_k is None else wire.top_k,
        presence_penalty=wire.presence_penalty or 0.0,
        frequency_penalty=wire.frequency_penalty or 0.0,
        repetition_penalty=wire.repetition_penalty or 1.0,
        seed=wire.seed,
        stop=stop,
    )


def _check_logit_bias(bias: Mapping[str, int] | None) -> None:
    """Token ids (decimal strings) with biases in [-100, 100], as OpenAI takes them; then
    refused, since no engine applies a bias (ignoring one would change the answer silently)."""
    if not bias:
        return
    for key, value in bias.items():
        if not _TOKEN_ID.fullmatch(key):
            raise InvalidRequest(
                f"Invalid logit_bias key {key[:32]!r}: keys are token ids (decimal strings).",
                param=f"logit_bias.{key[:32]}",
                code="invalid_value",
            )
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise InvalidRequest(
                f"Invalid logit_bias value for token {key}: biases are between "
                f"-{MAX_LOGIT_BIAS} and {MAX_LOGIT_BIAS}.",
                param=f"logit_bias.{key}",
                code="invalid_value",
            )
    raise InvalidRequest("logit_bias is not supported.", param="logit_bias")


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
    if wire.max_completion_tokens is not None:
        sampling = _sampling(wire, wire.max_completion_tokens, limits, "max_completion_tokens")
    else:
        sampling = _sampling(wire, wire.max_tokens, limits, "max_tokens")
    if wire.top_logprobs is not None and not wire.logprobs:
        raise InvalidRequest(
            "top_logprobs needs logprobs: true.", param="top_logprobs", code="invalid_value"
        )
    if wire.logprobs:
        sampling = replace(sampling, logprobs=wire.top_logprobs or 0)
    tools = _tools(raw.get("tools"))
    choice = _tool_choice(raw.get("tool_choice"), tools)
    messages = _messages(wire.messages)
    _check_tool_results(messages)
    constraint = _json_constraint(raw.get("response_format"))
    if choice.mode in ("required", "named"):
        allowed = [
            t["function"] for t in tools if choice.mode == "required" or
            t["function"]["name"] == choice.name
        ]  # fmt: skip
        constraint = OutputConstraint(
            "tool_calls", tools=tuple(allowed), parallel=wire.parallel_tool_calls is not False
        )
    request = ChatRequest(
        model=wire.model,
        messages=messages,
        sampling=sampling,
        n=wire.n,
        tools=() if choice.mode == "none" else tools,
        tool_choice=choice,
        constraint=constraint,
        request_id=request_id,
        stream=bool(wire.stream),
    )
    return wire, request


def check_json_schema(schema: Any, param: str) -> dict[str, Any]:
    """A JSON Schema the validators accept, or a 400 naming ``param``."""
    import jsonschema

    if not isinstance(schema, dict):
        raise InvalidRequest("A JSON Schema must be an object.", param=param, code="invalid_value")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidRequest(
            f"Invalid JSON Schema{f' at {where}' if where else ''}: {exc.message}",
            param=param,
            code="invalid_value",
        ) from None
    except RecursionError:
        raise InvalidRequest(
            "The JSON Schema is nested too deeply.", param=param, code="invalid_value"
        ) from None
    return cast(dict[str, Any], schema)


def _tools(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    tools = cast(list[dict[str, Any]], raw)  # shape already checked by the wire model
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") or {}
        name = fn.get("name", "")
        if not _TOOL_NAME.match(name):
            raise InvalidRequest(
                f"Invalid tool name {name!r}: use 1 to 64 letters, digits, '_' or '-'.",
                param=f"tools.[{i}].function.name",
                code="invalid_value",
            )
        if name in seen:
            raise InvalidRequest(
                f"Duplicate tool name {name!r}: tool names must be unique.",
                param=f"tools.[{i}].function.name",
                code="invalid_value",
            )
        seen.add(name)
        if fn.get("parameters") is not None:
            check_json_schema(fn["parameters"], f"tools.[{i}].function.parameters")
    return tuple(tools)


def _tool_choice(raw: Any, tools: Sequence[Mapping[str, Any]]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    names = {t["function"]["name"] for t in tools}
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise InvalidRequest(
                f"Invalid tool_choice {raw!r}: use 'none', 'auto', 'required' or a function.",
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
    fn = raw.get("function") if isinstance(raw, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            'tool_choice must be a string or {"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
            code="invalid_value",
        )
    if name not in names:
        raise InvalidRequest(
            f"tool_choice names the function {name!r}, which is not in 'tools'.",
            param="tool_choice",
            code="invalid_value",
        )
    return ToolChoice("named", name)


def _check_tool_results(messages: Sequence[ChatMessage]) -> None:
    ids: set[str] = set()
    for i, m in enumerate(messages):
        ids.update(c.id for c in m.tool_calls)
        if m.role != "tool":
            continue
        if m.tool_call_id is None:
            raise InvalidRequest(
                f"messages[{i}] has role 'tool' but no tool_call_id.",
                param=f"messages.[{i}].tool_call_id",
                code="invalid_value",
            )
        if m.tool_call_id not in ids:
            raise InvalidRequest(
                f"messages[{i}].tool_call_id {m.tool_call_id!r} matches no earlier tool call.",
                param=f"messages.[{i}].tool_call_id",
                code="invalid_value",
            )


def _json_constraint(raw: Any) -> OutputConstraint | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint("json")
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise InvalidRequest(
                "response_format json_schema needs 'json_schema': {'name': ..., 'schema': {...}}.",
                param="response_format.json_schema",
                code="invalid_value",
            )
        schema = check_json_schema(spec["schema"], "response_format.json_schema.schema")
        return OutputConstraint("json", schema=schema)
    raise InvalidRequest(
        f"Invalid response_format type {kind!r}: use 'text', 'json_object' or 'json_schema'.",
        param="response_format.type",
        code="invalid_value",
    )


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
    if wire.best_of not in (None, 1):
        raise InvalidRequest("best_of is not supported.", param="best_of")
    if wire.max_tokens == 0 and not wire.echo:
        raise InvalidRequest(
            "max_tokens must be at least 1 (0 only with echo).",
            param="max_tokens",
            code="invalid_value",
        )
    if wire.echo and wire.logprobs is None and not isinstance(prompt, str):
        raise InvalidRequest(  # the echoed text of token ids comes with their logprobs
            "echo with a token-id prompt needs logprobs; or send the prompt as text.",
            param="echo",
            code="invalid_value",
        )
    sampling = _sampling(wire, wire.max_tokens, limits, "max_tokens")
    if wire.logprobs is not None:
        sampling = replace(
            sampling,
            logprobs=wire.logprobs,
            prompt_logprobs=wire.logprobs if wire.echo else None,
        )
    core_prompt: str | tuple[int, ...] = (
        prompt if isinstance(prompt, str) else tuple(int(t) for t in cast(list[int], prompt))
    )
    return wire, TextRequest(
        wire.model, core_prompt, sampling, wire.n, request_id, stream=bool(wire.stream),
        echo=wire.echo,
    )  # fmt: skip
