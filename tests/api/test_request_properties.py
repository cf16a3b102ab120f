"""Any JSON value in any request field is answered with 2xx or a 4xx in OpenAI's envelope,
never a 5xx, and the in-process engine serves a normal request afterwards."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from support.fixtures import MODEL, InProcess
from support.spec import validate

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CHAT: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 2,
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21"},
    ],
    "tools": [TOOL],
}
COMPLETION: dict[str, Any] = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}

SAMPLING = [
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
    "stream_options.include_usage", "stop", "stop.0", "presence_penalty", "frequency_penalty",
    "seed", "user", "logit_bias", "logit_bias.42", "top_k", "repetition_penalty",
]  # fmt: skip
CHAT_PATHS = [
    *SAMPLING, "messages", "messages.0", "messages.0.role", "messages.0.content",
    "messages.0.name", "messages.1.content", "messages.1.content.0",
    "messages.1.content.0.type", "messages.1.content.0.text", "messages.2.tool_calls",
    "messages.2.tool_calls.0.id", "messages.2.tool_calls.0.function",
    "messages.2.tool_calls.0.function.name", "messages.2.tool_calls.0.function.arguments",
    "messages.3.tool_call_id", "max_completion_tokens", "tools", "tools.0", "tools.0.type",
    "tools.0.function", "tools.0.function.name", "tools.0.function.parameters",
    "tools.0.function.strict", "tool_choice", "tool_choice.function",
    "tool_choice.function.name", "parallel_tool_calls", "response_format",
    "response_format.type", "response_format.json_schema", "response_format.json_schema.schema",
    "logprobs",
]  # fmt: skip
COMPLETION_PATHS = [
    *SAMPLING, "prompt", "prompt.0", "prompt.0.0", "echo", "suffix", "logprobs", "best_of",
]  # fmt: skip
NUMBERS = [
    "temperature", "top_p", "n", "presence_penalty", "frequency_penalty", "seed", "top_k",
    "repetition_penalty", "logit_bias.42", "max_tokens",
]  # fmt: skip
#: Fields whose large values make the tiny model generate for long: kept small (or refused).
GENERATION_LENGTH = {"max_tokens", "max_completion_tokens", "n"}

KEYS = st.sampled_from(
    ["type", "function", "name", "text", "role", "content", "schema", "json_schema",
     "include_usage", "arguments", "parameters", "properties", "42"]
) | st.text(max_size=6)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**4000])
    | st.floats()  # NaN and the infinities too: json.dumps writes them as literals
    | st.sampled_from([1e-300, 5e-324, 1e308, 0.5, 2.0000001])
    | st.text(max_size=12)
    | st.sampled_from(["user", "function", "text", "json_object", "json_schema", "required"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
_ABSENT = object()


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``body`` with ``value`` at the dotted ``path`` (made where missing)."""
    out = copy.deepcopy(body)
    parts = path.split(".")
    node: Any = out
    for part in parts[:-1]:
        key: Any = int(part) if isinstance(node, list) else part
        if isinstance(node, list):
            if key >= len(node):
                return out  # nothing there to change
            node = node[key]
            continue
        if not isinstance(node.get(key), dict | list):
            node[key] = {}
        node = node[key]
    last = parts[-1]
    if isinstance(node, list):
        if int(last) < len(node):
            if value is _ABSENT:
                del node[int(last)]
            else:
                node[int(last)] = value
    elif value is _ABSENT:
        node.pop(last, None)
    else:
        node[last] = value
    return out


def _long_generation(path: str, value: Any) -> bool:
    small = isinstance(value, int) and not isinstance(value, bool) and value <= 4
    if path in ("max_tokens", "max_completion_tokens") and value in (None, _ABSENT):
        return path == "max_tokens"
    return path in GENERATION_LENGTH and isinstance(value, int) and not small


async def _check(
    gateway: InProcess, url: str, body: dict[str, Any], normal: dict[str, Any]
) -> None:
    resp = await gateway.http.post(
        url, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert resp.status_code < 500, (resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        validate("ErrorResponse", resp.json())
        assert resp.json()["error"]["type"] == "invalid_request_error"
    after = await gateway.http.post(url, json=normal)
    assert after.status_code == 200, after.text[:500]


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(CHAT_PATHS), value=JSON_VALUES | st.just(_ABSENT))
async def test_any_value_in_any_chat_field_is_not_a_server_error(
    gateway: InProcess, path: str, value: Any
) -> None:
    assume(not _long_generation(path, value))
    await _check(gateway, "/v1/chat/completions", _set(CHAT, path, value), CHAT)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(COMPLETION_PATHS), value=JSON_VALUES | st.just(_ABSENT))
async def test_any_value_in_any_completions_field_is_not_a_server_error(
    gateway: InProcess, path: str, value: Any
) -> None:
    assume(not _long_generation(path, value))
    await _check(gateway, "/v1/completions", _set(COMPLETION, path, value), COMPLETION)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(NUMBERS), value=SCALARS, chat=st.booleans())
async def test_any_scalar_in_any_sampling_field_is_not_a_server_error(
    gateway: InProcess, path: str, value: Any, chat: bool
) -> None:
    assume(not _long_generation(path, value))
    url, body = ("/v1/chat/completions", CHAT) if chat else ("/v1/completions", COMPLETION)
    await _check(gateway, url, _set(body, path, value), body)
