"""Turns a prompt-level :class:`TokenBackend` into an :class:`Engine`.

Qwen logic lives here once for every prompt-level backend: the chat template, the
tokenizer (control-token text in messages stays text) and the context/output limits.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from qwen_gateway.core.jsonoutput import check_json_output
from qwen_gateway.core.types import (
    ChatRequest,
    ChoiceFinished,
    EngineEvent,
    GenerationRequest,
    ModelInfo,
    TextDelta,
    TextRequest,
    ToolCallDelta,
)
from qwen_gateway.engines.base import EngineStats, TokenBackend
from qwen_gateway.errors import EngineUnavailable, InvalidRequest
from qwen_gateway.qwen.limits import output_budget
from qwen_gateway.qwen.template import ChatTemplate
from qwen_gateway.qwen.tokenizer import ENDOFTEXT_ID, QwenTokenizer
from qwen_gateway.qwen.toolparse import Content, ParseEvent, ToolCallParser


class PromptEngine:
    """Renders chat requests with the model's template and streams from the backend."""

    def __init__(self, backend: TokenBackend) -> None:
        self._backend = backend
        self._malformed_calls = 0

    def _assets(self) -> tuple[QwenTokenizer, ChatTemplate]:
        tokenizer, template = self._backend.tokenizer, self._backend.template
        if tokenizer is None or template is None:
            raise EngineUnavailable("The model is still loading.", headers={"Retry-After": "5"})
        return tokenizer, template

    @property
    def info(self) -> ModelInfo:
        return self._backend.info

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        tokenizer, template = self._assets()
        if isinstance(request, ChatRequest):
            return tokenizer.encode_pieces(template.render(request.messages, request.tools))
        if isinstance(request.prompt, str):
            return tokenizer.encode_raw(request.prompt)
        bad = next((t for t in request.prompt if not 0 <= t < tokenizer.vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"Token id {bad} is outside the vocabulary (0..{tokenizer.vocab_size - 1}).",
                param="prompt",
                code="invalid_value",
            )
        return list(request.prompt)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[EngineEvent, None]:
        ids = self.prompt_ids(request)
        info = self.info
        budget = output_budget(
            len(ids), request.sampling.max_tokens, info.context_window, info.max_output_tokens
        )
        sampling = replace(request.sampling, max_tokens=budget)
        if isinstance(request, TextRequest) and not ids:
            ids = [ENDOFTEXT_ID]
        if isinstance(request, TextRequest):
            return self._backend.generate(ids, sampling, request.n, request.request_id)
        events = self._backend.generate(
            ids, sampling, request.n, request.request_id, request.constraint
        )
        constraint = request.constraint
        if constraint is not None and constraint.kind == "json" and not info.enforces_constraints:
            events = self._checked_json(events, constraint.schema)
        if not request.tools:
            return events
        return self._with_tool_calls(events, request.tool_names)

    async def _checked_json(
        self, events: AsyncGenerator[EngineEvent, None], schema: dict[str, Any] | None
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

    async def _with_tool_calls(
        self, events: AsyncGenerator[EngineEvent, None], names: frozenset[str]
    ) -> AsyncGenerator[EngineEvent, None]:
        """Turn ``<tool_call>`` blocks in the text into tool-call events, per choice."""
        parsers: dict[int, ToolCallParser] = {}
        calls: dict[int, int] = {}

        def convert(index: int, parsed: list[ParseEvent]) -> list[EngineEvent]:
            out: list[EngineEvent] = []
            for item in parsed:
                if isinstance(item, Content):
                    if item.text:
                        out.append(TextDelta(index, item.text))
                else:
                    n = calls.get(index, 0)
                    calls[index] = n + 1
                    call_id = f"call_{uuid.uuid4().hex[:24]}"
                    out.append(ToolCallDelta(index, n, call_id, item.name, item.arguments))
            return out

        async with aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    parser = parsers.setdefault(event.index, ToolCallParser(names))
                    for converted in convert(event.index, parser.feed(event.text)):
                        yield converted
                elif isinstance(event, ChoiceFinished):
                    finished = parsers.pop(event.index, None)
                    if finished is not None:
                        for converted in convert(event.index, finished.finish()):
                            yield converted
                        self._malformed_calls += finished.malformed
                    reason = event.reason
                    if calls.get(event.index) and reason in ("stop", "length"):
                        reason = "tool_calls"
                    yield ChoiceFinished(event.index, reason)
                else:
                    yield event

    async def start(self) -> None:
        await self._backend.start()

    async def ready(self) -> bool:
        return await self._backend.ready()

    def stats(self) -> EngineStats:
        return replace(self._backend.stats(), malformed_tool_calls=self._malformed_calls)

    async def aclose(self) -> None:
        await self._backend.aclose()
