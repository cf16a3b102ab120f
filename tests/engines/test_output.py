"""Output post-processing: token logprobs through the tool-call parser."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
)
from qwen_gateway.engines.output import with_tool_calls


def _t(text: str) -> TokenLogprob:
    return TokenLogprob(text, -1.0, tuple(text.encode()))


async def _events(pieces: list[str]) -> AsyncGenerator[EngineEvent, None]:
    for piece in pieces:
        yield TextDelta(0, piece, (_t(piece),))
    yield ChoiceFinished(0, "stop")


async def test_logprobs_go_with_content_and_not_with_tool_calls() -> None:
    pieces = ["Sure", ". <", "tool_call>\n", '{"name": "f", "arguments": {}}', "\n</tool_call>"]
    out = [e async for e in with_tool_calls(_events(pieces), frozenset({"f"}))]
    texts = [e for e in out if isinstance(e, TextDelta)]
    assert "".join(e.text for e in texts).strip() == "Sure."
    tokens = [t.token for e in texts for t in e.logprobs]
    assert tokens[0] == "Sure"
    assert not any("tool_call" in t or "name" in t for t in tokens)
    assert [e.name for e in out if isinstance(e, ToolCallDelta)] == ["f"]


async def test_a_delta_holding_content_and_a_call_start_splits_its_logprobs() -> None:
    async def events() -> AsyncGenerator[EngineEvent, None]:
        tokens = ("Hi", " there", "<tool_call>", "\n", '{"name"')
        yield TextDelta(0, "".join(tokens), tuple(_t(t) for t in tokens))
        yield TextDelta(0, ': "f", "arguments": {}}\n</tool_call>', (_t(": ..."),))
        yield ChoiceFinished(0, "stop")

    out = [e async for e in with_tool_calls(events(), frozenset({"f"}))]
    texts = [e for e in out if isinstance(e, TextDelta)]
    assert "".join(e.text for e in texts).strip() == "Hi there"
    assert [t.token for e in texts for t in e.logprobs] == ["Hi", " there"]
    assert [e.name for e in out if isinstance(e, ToolCallDelta)] == ["f"]
