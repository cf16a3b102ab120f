"""Every client mistake is a 4xx in OpenAI's envelope, raised by the SDK as the right class."""

from __future__ import annotations

from typing import Any, get_args

import openai
import pytest
from anthropic.types.shared.error_type import ErrorType

from qwen_gateway.api.errors import anthropic_body
from support.fixtures import MODEL, InProcess
from support.spec import validate

OK: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def _with(**changes: Any) -> dict[str, Any]:
    body = {**OK, **changes}
    return {k: v for k, v in body.items() if v is not ...}


# (case id, body, status, error type, code, param, SDK exception class)
CHAT_CASES: list[tuple[str, dict[str, Any], int, str, str | None, str | None, type[Exception]]] = [
    (
        "unknown role",
        _with(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "invalid_request_error",
        "invalid_value",
        "messages.[0].role",
        openai.BadRequestError,
    ),
    (
        "image part",
        _with(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "x"}},
                    ],
                }
            ]
        ),
        400,
        "invalid_request_error",
        "invalid_value",
        "messages.[0].content.[1].type",
        openai.BadRequestError,
    ),
    (
        "missing messages",
        _with(messages=...),
        400,
        "invalid_request_error",
        "invalid_value",
        "messages",
        openai.BadRequestError,
    ),
    (
        "empty messages",
        _with(messages=[]),
        400,
        "invalid_request_error",
        "invalid_value",
        "messages",
        openai.BadRequestError,
    ),
    (
        "user without content",
        _with(messages=[{"role": "user"}]),
        400,
        "invalid_request_error",
        "invalid_value",
        "messages.[0].content",
        openai.BadRequestError,
    ),
    (
        "temperature too high",
        _with(temperature=2.5),
        400,
        "invalid_request_error",
        "invalid_value",
        "temperature",
        openai.BadRequestError,
    ),
    (
        "top_p zero",
        _with(top_p=0),
        400,
        "invalid_request_error",
        "invalid_value",
        "top_p",
        openai.BadRequestError,
    ),
    (
        "max_tokens zero",
        _with(max_tokens=0),
        400,
        "invalid_request_error",
        "invalid_value",
        "max_tokens",
        openai.BadRequestError,
    ),
    (
        "max_tokens over the output limit",
        _with(max_tokens=8193),
        400,
        "invalid_request_error",
        "invalid_value",
        "max_tokens",
        openai.BadRequestError,
    ),
    (
        "max_completion_tokens over the limit",
        _with(max_completion_tokens=10_000),
        400,
        "invalid_request_error",
        "invalid_value",
        "max_completion_tokens",
        openai.BadRequestError,
    ),
    (
        "too many choices",
        _with(n=100),
        400,
        "invalid_request_error",
        "invalid_value",
        "n",
        openai.BadRequestError,
    ),
    (
        "five stop strings",
        _with(stop=["a", "b", "c", "d", "e"]),
        400,
        "invalid_request_error",
        "invalid_value",
        "stop",
        openai.BadRequestError,
    ),
    (
        "presence penalty",
        _with(presence_penalty=2.5),
        400,
        "invalid_request_error",
        "invalid_value",
        "presence_penalty",
        openai.BadRequestError,
    ),
    (
        "frequency penalty",
        _with(frequency_penalty=-3),
        400,
        "invalid_request_error",
        "invalid_value",
        "frequency_penalty",
        openai.BadRequestError,
    ),
    (
        "bad tool call arguments",
        _with(
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{not json"},
                        }
                    ],
                },
            ]
        ),
        400,
        "invalid_request_error",
        "invalid_value",
        "messages.[1].tool_calls.[0].function.arguments",
        openai.BadRequestError,
    ),
    (
        "prompt plus max_tokens beyond the window",
        _with(messages=[{"role": "user", "content": "hello " * 32_000}], max_tokens=8000),
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        openai.BadRequestError,
    ),
    (
        "prompt alone beyond the window",
        _with(messages=[{"role": "user", "content": "hello " * 33_000}]),
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        openai.BadRequestError,
    ),
    (
        "unknown model",
        _with(model="gpt-9"),
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
        openai.NotFoundError,
    ),
    (
        "top_logprobs above 20",
        _with(logprobs=True, top_logprobs=21),
        400,
        "invalid_request_error",
        "invalid_value",
        "top_logprobs",
        openai.BadRequestError,
    ),
]


def _check_envelope(body: Any, error_type: str, code: str | None, param: str | None) -> None:
    validate("ErrorResponse", body)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    assert err["type"] == error_type
    assert err["code"] == code
    assert err["param"] == param


@pytest.mark.parametrize(
    ("body", "status", "error_type", "code", "param", "sdk_error"),
    [pytest.param(*case[1:], id=case[0]) for case in CHAT_CASES],
)
async def test_chat_errors(
    gateway: InProcess,
    body: dict[str, Any],
    status: int,
    error_type: str,
    code: str | None,
    param: str | None,
    sdk_error: type[Exception],
) -> None:
    resp = await gateway.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == status
    _check_envelope(resp.json(), error_type, code, param)
    with pytest.raises(sdk_error) as info:
        await gateway.client.chat.completions.create(**{"messages": openai.omit, **body})
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == status
    assert info.value.code == code


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        pytest.param(
            b"{not json",
            {"content-type": "application/json"},
            400,
            "invalid_json",
            id="malformed json",
        ),
        pytest.param(
            b'["a list"]',
            {"content-type": "application/json"},
            400,
            None,
            id="json that is not an object",
        ),
        pytest.param(
            b'{"model": "x"}',
            {"content-type": "text/plain"},
            400,
            "invalid_content_type",
            id="wrong content type",
        ),
        pytest.param(
            b"\xff\xfe", {"content-type": "application/json"}, 400, "invalid_json", id="not utf-8"
        ),
        pytest.param(
            b'{"model": "x", "seed": ' + b"7" * 5000 + b"}",
            {"content-type": "application/json"},
            400,
            "invalid_json",
            id="5000-digit integer",
        ),
        *(
            pytest.param(
                b'{"model": "x", "temperature": ' + literal + b"}",
                {"content-type": "application/json"},
                400,
                "invalid_json",
                id=f"{literal.decode()} literal",
            )
            for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400")
        ),
    ],
)
async def test_malformed_bodies(
    gateway: InProcess, content: bytes, headers: dict[str, str], status: int, code: str | None
) -> None:
    resp = await gateway.http.post("/v1/chat/completions", content=content, headers=headers)
    assert resp.status_code == status
    _check_envelope(resp.json(), "invalid_request_error", code, None)


async def test_oversized_body_is_413(gateway: InProcess) -> None:
    big = b'{"model": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    resp = await gateway.http.post(
        "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413
    _check_envelope(resp.json(), "invalid_request_error", "request_too_large", None)


async def test_oversized_chunked_body_is_413(gateway: InProcess) -> None:
    async def body() -> Any:
        for _ in range(9):
            yield b"x" * (1024 * 1024)

    resp = await gateway.http.post(
        "/v1/chat/completions", content=body(), headers={"content-type": "application/json"}
    )
    assert resp.status_code == 413


async def test_unknown_route_is_404_in_the_envelope(gateway: InProcess) -> None:
    resp = await gateway.http.get("/v1/nothing-here")
    assert resp.status_code == 404
    _check_envelope(resp.json(), "invalid_request_error", "not_found", None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param(
            {"model": MODEL, "prompt": "x", "max_tokens": 9000}, "max_tokens", id="max_tokens"
        ),
        pytest.param({"model": MODEL}, "prompt", id="missing prompt"),
        pytest.param(
            {"model": MODEL, "prompt": [1, 2, 999_999_999]},
            "prompt",
            id="token id outside the vocabulary",
        ),
        pytest.param({"model": MODEL, "prompt": [-1]}, "prompt", id="negative token id"),
        pytest.param({"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix", id="suffix"),
        pytest.param({"model": MODEL, "prompt": ["a", "b"]}, "prompt", id="several prompts"),
        pytest.param(
            {"model": MODEL, "prompt": "x", "temperature": -1}, "temperature", id="temperature"
        ),
    ],
)
async def test_completion_errors(gateway: InProcess, body: dict[str, Any], param: str) -> None:
    resp = await gateway.http.post("/v1/completions", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param
    with pytest.raises(openai.BadRequestError):
        await gateway.client.completions.create(**{"prompt": openai.omit, **body})


# (case id, endpoint, changes to a valid body, the param the 400 names)
FIELD_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("seed above int64", "chat", {"seed": 2**70}, "seed"),
    ("seed below int64", "chat", {"seed": -(2**63) - 1}, "seed"),
    ("seed + n - 1 above int64", "chat", {"seed": 2**63 - 1, "n": 2}, "seed"),
    ("repetition penalty near zero", "text", {"repetition_penalty": 1e-300}, "repetition_penalty"),
    ("repetition penalty below 0.01", "chat", {"repetition_penalty": 0.001}, "repetition_penalty"),
    ("top_k beyond int32", "chat", {"top_k": 2**40}, "top_k"),
    ("n beyond OpenAI's 128", "text", {"n": 129}, "n"),
    ("n as a fraction", "chat", {"n": 1.5}, "n"),
    ("max_tokens as a string", "chat", {"max_tokens": "3"}, "max_tokens"),
    ("max_tokens as a float", "text", {"max_tokens": 2.0}, "max_tokens"),
    ("max_tokens beyond int32", "chat", {"max_tokens": 2**40}, "max_tokens"),
    ("stream as 0", "chat", {"stream": 0}, "stream"),
    ("stream as a string", "text", {"stream": "true"}, "stream"),
    ("temperature as a string", "chat", {"temperature": "1"}, "temperature"),
    ("temperature as a boolean", "chat", {"temperature": True}, "temperature"),
    (
        "include_usage as 1",
        "chat",
        {"stream_options": {"include_usage": 1}},
        "stream_options.include_usage",
    ),
    ("logit_bias key not a token id", "chat", {"logit_bias": {"abc": 1}}, "logit_bias.abc"),
    ("logit_bias value above 100", "chat", {"logit_bias": {"42": 101}}, "logit_bias.42"),
    ("logit_bias value not an integer", "text", {"logit_bias": {"42": 1.5}}, "logit_bias.42"),
    ("logit_bias is not applied", "chat", {"logit_bias": {"42": 5}}, "logit_bias"),
    ("logprobs as 1", "chat", {"logprobs": 1}, "logprobs"),
    (
        "parallel_tool_calls as a string",
        "chat",
        {"parallel_tool_calls": "yes"},
        "parallel_tool_calls",
    ),
    (
        "tool strict as 1",
        "chat",
        {"tools": [{"type": "function", "function": {"name": "f", "strict": 1}}]},
        "tools.[0].function.strict",
    ),
    (
        "content as a number",
        "chat",
        {"messages": [{"role": "user", "content": 5}]},
        "messages.[0].content",
    ),
    ("best_of above 20", "text", {"best_of": 21}, "best_of"),
    ("logprobs above 5", "text", {"logprobs": 6}, "logprobs"),
    ("echo as 1", "text", {"echo": 1}, "echo"),
    ("prompt token as a float", "text", {"prompt": [1.5]}, "prompt"),
]


@pytest.mark.parametrize(
    ("endpoint", "changes", "param"), [pytest.param(*c[1:], id=c[0]) for c in FIELD_CASES]
)
async def test_out_of_range_or_mistyped_fields_are_400s_naming_the_field(
    gateway: InProcess, endpoint: str, changes: dict[str, Any], param: str
) -> None:
    if endpoint == "chat":
        url, body = "/v1/chat/completions", {**OK, "max_tokens": 2, **changes}
    else:
        url, body = "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, **changes}
    resp = await gateway.http.post(url, json=body)
    assert resp.status_code == 400, resp.text
    _check_envelope(resp.json(), "invalid_request_error", resp.json()["error"]["code"], param)


@pytest.mark.parametrize(
    ("changes", "url"),
    [
        pytest.param({"seed": 2**63 - 1}, "/v1/chat/completions", id="largest seed"),
        pytest.param({"seed": -(2**63), "n": 2}, "/v1/completions", id="smallest seed, n=2"),
        pytest.param({"temperature": 1e-300}, "/v1/chat/completions", id="tiny temperature"),
        pytest.param({"temperature": 0, "top_p": 1}, "/v1/completions", id="integers for numbers"),
        pytest.param({"repetition_penalty": 0.01}, "/v1/completions", id="smallest penalty"),
        pytest.param({"logit_bias": {}}, "/v1/chat/completions", id="empty logit_bias"),
    ],
)
async def test_extreme_values_in_range_are_served(
    gateway: InProcess, changes: dict[str, Any], url: str
) -> None:
    body = {"model": MODEL, "max_tokens": 2, **changes}
    body.update({"messages": OK["messages"]} if "chat" in url else {"prompt": "hi"})
    resp = await gateway.http.post(url, json=body)
    assert resp.status_code == 200, resp.text
    again = await gateway.http.post("/v1/chat/completions", json={**OK, "max_tokens": 2})
    assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, "invalid_request_error"), (429, "rate_limit_error"), (500, "api_error"),
     (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error")],
)  # fmt: skip
def test_anthropic_error_types_are_the_sdks(status: int, error_type: str) -> None:
    body = anthropic_body("went wrong", status, "tools.[0].name")
    assert body["error"]["type"] == error_type
    assert error_type in get_args(ErrorType)
    assert body["error"]["message"] == "tools.[0].name: went wrong"
