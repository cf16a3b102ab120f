"""Logprobs and echo through the OpenAI-upstream engine, with a second gateway (a real
server on the tiny model) as the upstream: what the client gets through the relay equals
what the upstream gives directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from engines.test_upstream import relay
from support.fixtures import MODEL
from support.server import Server

ASK = [{"role": "user", "content": "Tell me about cats."}]


def _chat_entries(completion: Any) -> list[tuple[str, float, list[int], list[str]]]:
    content = completion.choices[0].logprobs.content
    return [(e.token, e.logprob, e.bytes, [t.token for t in e.top_logprobs]) for e in content]


async def test_chat_logprobs_pass_through_streamed_and_not(server: Server, tmp_path: Path) -> None:
    args: dict[str, Any] = {
        "messages": ASK, "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 2,
    }  # fmt: skip
    async with openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key="x", max_retries=0
    ) as direct:
        expected = await direct.chat.completions.create(model=MODEL, **args)
    async with relay(server.base_url + "/v1", tmp_path, model=MODEL) as g:
        got = await g.client.chat.completions.create(model="relayed", **args)
        assert _chat_entries(got) == _chat_entries(expected)
        stream = await g.client.chat.completions.create(model="relayed", stream=True, **args)
        streamed = [
            (e.token, e.logprob)
            async for c in stream
            for choice in c.choices
            if choice.logprobs is not None
            for e in choice.logprobs.content or ()
        ]
        assert streamed == [(t, lp) for t, lp, _, _ in _chat_entries(expected)]


@pytest.mark.parametrize("stream", [False, True])
async def test_completion_echo_logprobs_pass_through(
    server: Server, tmp_path: Path, stream: bool
) -> None:
    args: dict[str, Any] = {
        "prompt": "The cat sat on", "max_tokens": 3, "temperature": 0, "logprobs": 1,
        "echo": True,
    }  # fmt: skip
    async with openai.AsyncOpenAI(
        base_url=server.base_url + "/v1", api_key="x", max_retries=0
    ) as direct:
        expected = await direct.completions.create(model=MODEL, **args)
    async with relay(server.base_url + "/v1", tmp_path, model=MODEL, echo=True) as g:
        if stream:
            tokens: list[str] = []
            values: list[float | None] = []
            offsets: list[int] = []
            text = ""
            async for chunk in await g.client.completions.create(
                model="relayed", stream=True, **args
            ):
                for c in chunk.choices:
                    text += c.text
                    if c.logprobs is not None:
                        tokens += c.logprobs.tokens or []
                        values += c.logprobs.token_logprobs or []
                        offsets += c.logprobs.text_offset or []
        else:
            got = await g.client.completions.create(model="relayed", **args)
            lp = got.choices[0].logprobs
            assert lp is not None
            text = got.choices[0].text
            tokens, values = lp.tokens or [], lp.token_logprobs or []
            offsets = lp.text_offset or []
    want = expected.choices[0].logprobs
    assert want is not None
    assert text == expected.choices[0].text
    assert tokens == want.tokens
    assert values == want.token_logprobs
    assert offsets == want.text_offset
    assert values[0] is None


async def test_an_upstream_without_echo_refuses_the_prompt_logprobs(
    server: Server, tmp_path: Path
) -> None:
    async with relay(server.base_url + "/v1", tmp_path, model=MODEL, logprobs=False) as g:
        card = (await g.http.get("/v1/models/relayed")).json()
        assert card["capabilities"]["logprobs"] is False
        assert card["capabilities"]["echo"] is False
        got = await g.http.post(
            "/v1/completions",
            json={"model": "relayed", "prompt": "Hi", "echo": True, "logprobs": 1},
        )
        assert got.status_code == 400
        assert got.json()["error"]["param"] == "logprobs"
        got = await g.http.post(
            "/v1/chat/completions",
            json={"model": "relayed", "messages": ASK, "logprobs": True},
        )
        assert got.status_code == 400
        assert got.json()["error"]["param"] == "logprobs"


def test_a_vllm_style_echo_chunk_is_split_into_the_prompt_and_the_output() -> None:
    """vLLM streams the echoed prompt and the first output token in one chunk."""
    from qwen_gateway.core.types import PromptLogprobs, TextDelta
    from qwen_gateway.engines.openai_upstream import _Echo, _events

    chunk = {
        "choices": [
            {
                "index": 0,
                "text": "Hi there!",
                "logprobs": {
                    "tokens": ["Hi", " there", "!"],
                    "token_logprobs": [None, -1.5, -0.25],
                    "top_logprobs": [
                        None,
                        {" there": -1.5},
                        {"!": -0.25, "bytes:\\xe2\\x80": -3.0},
                    ],
                    "text_offset": [0, 2, 8],
                },
            }
        ]
    }
    echo = _Echo(len("Hi there"))
    events = _events(chunk, {}, echo)
    prompt = [e for e in events if isinstance(e, PromptLogprobs)]
    assert [[(t.token, t.logprob) for t in p.tokens] for p in prompt] == [
        [("Hi", None), (" there", -1.5)]
    ]
    (delta,) = [e for e in events if isinstance(e, TextDelta)]
    assert delta.text == "!"
    assert [(t.token, t.logprob) for t in delta.logprobs] == [("!", -0.25)]
    assert delta.logprobs[0].top[1].bytes == (0xE2, 0x80)  # an escaped partial character
    # the next choice's echo is not reported twice
    again = _events({"choices": [{**chunk["choices"][0], "index": 1}]}, {}, echo)
    assert not any(isinstance(e, PromptLogprobs) for e in again)


def test_an_echo_without_text_offsets_is_split_by_the_tokens_text() -> None:
    from qwen_gateway.core.types import PromptLogprobs, TextDelta
    from qwen_gateway.engines.openai_upstream import _Echo, _events

    item = {"index": 0, "text": "ab c", "logprobs": {"tokens": ["a", "b", " c"],
            "token_logprobs": [None, -1.0, -2.0]}}  # fmt: skip
    events = _events({"choices": [item]}, {}, _Echo(2))
    assert [len(e.tokens) for e in events if isinstance(e, PromptLogprobs)] == [2]
    assert [(e.text, len(e.logprobs)) for e in events if isinstance(e, TextDelta)] == [(" c", 1)]


async def test_echo_of_the_prompt_alone_is_answered_here(server: Server, tmp_path: Path) -> None:
    """echo with max_tokens 0 and no logprobs: the upstream is not asked for 0 tokens."""
    async with relay(server.base_url + "/v1", tmp_path, model=MODEL) as g:
        got = await g.client.completions.create(
            model="relayed", prompt="The cat sat on", max_tokens=0, echo=True
        )
    assert got.choices[0].text == "The cat sat on"
    assert got.choices[0].finish_reason == "length"
    assert got.usage is not None and got.usage.completion_tokens == 0
    assert got.usage.prompt_tokens > 0
