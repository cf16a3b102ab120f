"""The cache key: what changes it (everything that changes the answer, and the scope) and what
does not (streaming, the request id, the tenant field, the meter)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qwen_gateway.cache.key import last_user_message, request_key, scope_of
from qwen_gateway.core.types import (
    ChatMessage,
    ChatRequest,
    OutputConstraint,
    SamplingParams,
    TextRequest,
    ToolCall,
    ToolChoice,
    UsageMeter,
)

BASE = ChatRequest(
    "m",
    (ChatMessage("system", "be brief"), ChatMessage("user", "hello")),
    SamplingParams(temperature=0.0, max_tokens=16),
)
SCOPE = scope_of("key:1", shared=False)


def _key(request: ChatRequest | TextRequest, target: str = "m", scope: str = SCOPE) -> str:
    return request_key(request, target, scope)


def test_the_key_is_a_stable_hex_digest() -> None:
    key = _key(BASE)
    assert key == _key(replace(BASE)) and len(key) == 64
    int(key, 16)


def test_streaming_request_id_tenant_and_meter_do_not_change_the_key() -> None:
    same = replace(BASE, stream=True, request_id="r2", tenant="key:9", meter=UsageMeter(5, 5))
    assert _key(same) == _key(BASE)


SAMPLING = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.mark.parametrize(
    "changed",
    [
        replace(BASE, messages=(ChatMessage("user", "hello"),)),
        replace(BASE, messages=(*BASE.messages[:1], ChatMessage("user", "hello!"))),
        replace(
            BASE,
            messages=(
                *BASE.messages,
                ChatMessage("assistant", None, (ToolCall("c1", "f", {"a": 1}),)),
            ),
        ),
        replace(BASE, n=2),
        replace(BASE, tools=({"type": "function", "function": {"name": "f"}},)),
        replace(BASE, tool_choice=ToolChoice("none")),
        replace(BASE, constraint=OutputConstraint("json")),
        replace(BASE, sampling=replace(SAMPLING, max_tokens=17)),
        replace(BASE, sampling=replace(SAMPLING, default_max_tokens=8)),
        replace(BASE, sampling=replace(SAMPLING, temperature=0.5)),
        replace(BASE, sampling=replace(SAMPLING, top_p=0.9)),
        replace(BASE, sampling=replace(SAMPLING, top_k=5)),
        replace(BASE, sampling=replace(SAMPLING, presence_penalty=0.1)),
        replace(BASE, sampling=replace(SAMPLING, frequency_penalty=0.1)),
        replace(BASE, sampling=replace(SAMPLING, repetition_penalty=1.1)),
        replace(BASE, sampling=replace(SAMPLING, seed=7)),
        replace(BASE, sampling=replace(SAMPLING, stop=("x",))),
    ],
)
def test_whatever_changes_the_answer_changes_the_key(changed: ChatRequest) -> None:
    assert _key(changed) != _key(BASE)


def test_the_scope_and_the_target_change_the_key() -> None:
    assert _key(BASE, scope=scope_of("key:2", shared=False)) != _key(BASE)
    assert _key(BASE, scope=scope_of("key:1", shared=True)) != _key(BASE)
    assert scope_of("key:1", True) == scope_of("key:2", True) == "shared"
    assert _key(BASE, target="other") != _key(BASE)


def test_chat_and_text_requests_never_share_a_key() -> None:
    text = TextRequest("m", "hello", SAMPLING)
    assert _key(text) != _key(replace(BASE, messages=(ChatMessage("user", "hello"),)))
    assert _key(text) != _key(TextRequest("m", (1, 2), SAMPLING))


def test_the_last_user_message_is_what_a_near_duplicate_lookup_compares() -> None:
    assert last_user_message(BASE) == "hello"
    assert last_user_message(TextRequest("m", "hello")) is None
    assert last_user_message(replace(BASE, messages=(ChatMessage("system", "x"),))) is None
