"""Output post-processing shared by every engine: tool-call parsing and JSON checking.

Prompt-level engines run model text through these; chat-level upstreams run the ``content``
they relay through them too, so raw ``<tool_call>`` text from an upstream without a tool
parser comes out as proper tool calls.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

from qwen_gateway.core.jsonoutput import check_json_output
from qwen_gateway.core.types import (
    ChoiceFinished,
    EngineEvent,
    TextDelta,
    TokenLogprob,
    ToolCallDelta,
)
from qwen_gateway.errors import InvalidModelOutput
from qwen_gateway.qwen.tokenizer import utf8_boundary
from qwen_gateway.qwen.toolparse import Content, ParseEvent, ToolCallParser


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


async def checked_json(
    events: AsyncGenerator[EngineEvent, None], schema: dict[str, Any] | None
) -> AsyncGenerator[EngineEvent, None]:
    """Validate each choice's JSON when it ends; a violation fails the request."""
    texts: dict[int, str] = {}
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                texts[event.index] = texts.get(event.index, "") + event.text
            elif isinstance(event, ChoiceFinished):
                check_json_output(texts.pop(event.index, ""), schema)
            yield event


async def checked_tool_calls(
    events: AsyncGenerator[EngineEvent, None], tools: tuple[dict[str, Any], ...]
) -> AsyncGenerator[EngineEvent, None]:
    """For forced tool calls (tool_choice required or named) from engines that cannot enforce
    them: every choice must call one of ``tools`` with arguments valid for its parameters.

    A call cut short by max_tokens, or a choice that answered in text, fails the request.
    """
    schemas = {str(t.get("name", "")): t.get("parameters") for t in tools}
    called: set[int] = set()
    async with aclosing(events):
        async for event in events:
            if isinstance(event, ToolCallDelta):
                if event.name not in schemas:
                    raise InvalidModelOutput(
                        f"The model called '{event.name}', which tool_choice does not allow."
                    )
                schema = schemas[event.name]
                check_json_output(
                    event.arguments,
                    schema if isinstance(schema, dict) else None,
                    what=f"The arguments of the call to '{event.name}'",
                    asked="tool_choice asked for a call",
                )
                called.add(event.index)
            elif isinstance(event, ChoiceFinished) and event.index not in called:
                raise InvalidModelOutput(
                    "The model answered without calling a tool, although tool_choice asked "
                    "for a call."
                )
            yield event


async def with_tool_calls(
    events: AsyncGenerator[EngineEvent, None],
    names: frozenset[str],
    count_malformed: Callable[[int], None] = lambda n: None,
) -> AsyncGenerator[EngineEvent, None]:
    """Turn ``<tool_call>`` blocks in the text into tool-call events, per choice.

    Token logprobs go with the next content text the parser lets out (text it holds back
    keeps its tokens' logprobs waiting); those of a tool call's tokens are dropped, as a call
    has no logprobs in OpenAI's shapes."""
    parsers: dict[int, ToolCallParser] = {}
    calls: dict[int, int] = {}
    pending: dict[int, TokenSplitter] = {}

    def convert(index: int, parsed: list[ParseEvent]) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        for item in parsed:
            if isinstance(item, Content):
                if item.text:
                    waiting = pending[index].take(len(item.text)) if index in pending else ()
                    out.append(TextDelta(index, item.text, waiting))
            else:
                pending.pop(index, None)  # the call's own tokens
                n = calls.get(index, 0)
                calls[index] = n + 1
                out.append(ToolCallDelta(index, n, new_call_id(), item.name, item.arguments))
        return out

    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                parser = parsers.setdefault(event.index, ToolCallParser(names))
                if event.logprobs:
                    pending.setdefault(event.index, TokenSplitter()).pending.extend(event.logprobs)
                for converted in convert(event.index, parser.feed(event.text)):
                    yield converted
            elif isinstance(event, ToolCallDelta):
                calls[event.index] = max(calls.get(event.index, 0), event.call_index + 1)
                yield event
            elif isinstance(event, ChoiceFinished):
                finished = parsers.pop(event.index, None)
                if finished is not None:
                    for converted in convert(event.index, finished.finish()):
                        yield converted
                    count_malformed(finished.malformed)
                pending.pop(event.index, None)
                reason = event.reason
                if calls.get(event.index) and reason in ("stop", "length"):
                    reason = "tool_calls"
                yield ChoiceFinished(event.index, reason, event.stop_sequence)
            else:
                yield event


class TokenSplitter:
    """Token logprobs waiting for their text: :meth:`take` gives those that make the next
    ``chars`` characters (a token whose text runs past them goes with the first piece it
    shows in), so the tokens of a tool call that starts in the same delta stay behind."""

    __slots__ = ("_ahead", "_partial", "pending")

    def __init__(self) -> None:
        self.pending: deque[TokenLogprob] = deque()
        self._ahead = 0  # characters of tokens handed out whose text is still to come
        self._partial = b""  # the bytes of an incomplete character, from the last token out

    def take(self, chars: int) -> tuple[TokenLogprob, ...]:
        if self._ahead >= chars:
            self._ahead -= chars
            return ()
        need, got = chars - self._ahead, 0
        out: list[TokenLogprob] = []
        while self.pending and got < need:
            entry = self.pending.popleft()
            out.append(entry)
            data = self._partial + bytes(entry.bytes)
            cut = utf8_boundary(data)
            got += len(data[:cut].decode("utf-8", errors="replace"))
            self._partial = data[cut:]
        self._ahead = max(0, got - need)
        return tuple(out)
