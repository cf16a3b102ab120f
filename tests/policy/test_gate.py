"""Admission counts prompt tokens: text far beyond the window is refused untokenised."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_gateway.core.types import ChatMessage, ChatRequest, TextRequest
from qwen_gateway.errors import ContextLengthExceeded, InvalidRequest
from qwen_gateway.policy.gate import Gate
from qwen_gateway.policy.ratelimit import LocalLimiter
from qwen_gateway.qwen.limits import PROMPT_CHARS_PER_TOKEN
from qwen_gateway.qwen.tokenizer import QwenTokenizer

WINDOW = 4096


class CountingTokenizer:
    def __init__(self) -> None:
        self._real = QwenTokenizer.builtin()
        self.calls = 0

    def encode_pieces(self, pieces: Any) -> list[int]:
        self.calls += 1
        return self._real.encode_pieces(pieces)

    def encode_raw(self, text: str) -> list[int]:
        self.calls += 1
        return self._real.encode_raw(text)


async def _gate(window: int = WINDOW) -> tuple[Gate, CountingTokenizer]:
    gate = Gate(LocalLimiter(60), {})
    await gate.start()
    gate.context_window = lambda: window
    tokenizer = CountingTokenizer()
    gate._tokenizer = tokenizer  # type: ignore[assignment]
    return gate, tokenizer


async def test_text_far_beyond_the_window_is_refused_untokenised() -> None:
    gate, tokenizer = await _gate()
    too_long = "x" * (WINDOW * PROMPT_CHARS_PER_TOKEN + 1)
    chat = ChatRequest("m", (ChatMessage("user", too_long),))
    with pytest.raises(ContextLengthExceeded):
        await gate.prompt_tokens(chat)
    with pytest.raises(ContextLengthExceeded):
        await gate.prompt_tokens(TextRequest("m", too_long))
    assert tokenizer.calls == 0
    assert await gate.prompt_tokens(TextRequest("m", "hello world")) == 2
    long_enough = " word" * 2000  # tokenised in a worker thread
    assert await gate.prompt_tokens(TextRequest("m", long_enough)) == 2000
    assert tokenizer.calls == 2


async def test_a_million_spaces_is_a_client_error() -> None:
    gate, _ = await _gate(window=10**6)
    with pytest.raises(InvalidRequest):
        await gate.prompt_tokens(ChatRequest("m", (ChatMessage("user", " " * 10**6),)))
