"""Every client mistake is a 4xx in OpenAI's envelope, raised by the SDK as the right class."""

from __future__ import annotations

from typing import Any

import openai
import pytest

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
        "max_tokens",
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
        "logprobs",
        _with(logprobs=True),
        400,
        "invalid_request_error",
        None,
        "logprobs",
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
