"""One prompt-token count for every part of the gateway: the reference tokenizer's, for chat
requests with and without tools, raw text prompts (special tokens stay special) and ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qwen_gateway.core.types import ChatMessage, ChatRequest, TextRequest
from qwen_gateway.errors import InvalidRequest
from qwen_gateway.qwen.counting import count_prompt_tokens, prompt_ids
from qwen_gateway.qwen.template import ChatTemplate
from qwen_gateway.qwen.tokenizer import IM_START_ID, QwenTokenizer

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def assets(tiny_model_dir: Path) -> tuple[QwenTokenizer, ChatTemplate]:
    return QwenTokenizer.from_dir(tiny_model_dir), ChatTemplate.from_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.mark.parametrize("tools", [(), (WEATHER,)], ids=["plain", "tools"])
def test_a_chat_counts_as_the_reference_template_renders_it(
    assets: tuple[QwenTokenizer, ChatTemplate], reference: Any, tools: tuple[dict[str, Any], ...]
) -> None:
    messages = [{"role": "user", "content": "Wie ist das Wetter in Köln? 今天天气如何"}]
    request = ChatRequest(
        model="m", messages=tuple(ChatMessage("user", m["content"]) for m in messages), tools=tools
    )
    text = reference.apply_chat_template(
        messages, tools=list(tools) or None, add_generation_prompt=True, tokenize=False
    )
    expected = reference(text, add_special_tokens=False)["input_ids"]
    assert prompt_ids(*assets, request) == list(expected)
    assert count_prompt_tokens(*assets, request) == len(expected)
    assert count_prompt_tokens(*assets, request) == len(expected)  # again, from the piece cache


def test_raw_text_keeps_special_tokens(assets: tuple[QwenTokenizer, ChatTemplate]) -> None:
    request = TextRequest(model="m", prompt="<|im_start|>user\nhi<|im_end|>")
    ids = prompt_ids(*assets, request)
    assert ids[0] == IM_START_ID
    assert count_prompt_tokens(*assets, request) == len(ids)


def test_token_ids_are_counted_and_checked_only_when_used(
    assets: tuple[QwenTokenizer, ChatTemplate],
) -> None:
    tokenizer = assets[0]
    request = TextRequest(model="m", prompt=(1, 2, tokenizer.vocab_size))
    assert count_prompt_tokens(*assets, request) == 3
    with pytest.raises(InvalidRequest, match="outside the vocabulary") as info:
        prompt_ids(*assets, request)
    assert info.value.param == "prompt"
    assert prompt_ids(*assets, TextRequest(model="m", prompt=(5, 6))) == [5, 6]
